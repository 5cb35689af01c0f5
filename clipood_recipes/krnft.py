"""The recipes as classes with one short method per stage (torchtune style), each stage one call per step into
the library. ``recipes/zeroshot.py`` runs :class:`ZeroShotRecipe` (setup → save), ``recipes/krnft.py`` and
``recipes/ablation.py`` run :class:`KRNFTRecipe` (setup → train → evaluate → save; the ablation trains and
evaluates once per variant after one setup, so every variant reuses the same caches)."""
from __future__ import annotations

import logging
from pathlib import Path

from clipood.config.checks import cache_root
from clipood.config.records import DataSettings
from clipood.config.settings import EvalSettings, typed
from clipood.crops.train_data import build_crop_data
from clipood.evaluation.benchmark import backbone_label, data_label, make_accelerator, prepare_splits, setup_benchmark
from clipood.evaluation.report import chance_warnings, plot_loss, split_heading, summary_table, write_outputs
from clipood.evaluation.posthoc_eval import check_scores, evaluate_scores
from clipood.evaluation.posthoc_run import PosthocRun, PosthocSources
from clipood.evaluation.runner import evaluate_detectors, zero_shot_detectors
from clipood.io import write_json
from clipood.runtime.recipe import seed_everything, setup_logging, use_cpu_threads
from clipood.runtime.run_lock import claim_output_dir, release_output_dirs
from clipood.training.loop import CropTrainData, fit

from .configure import check_option_folders, run_crops, train_config
from .signature import check_resume, run_signature
from .methods import (adapter_detector, adapter_requires, build_training_task, save_trained_adapter,
                      trains_text_encoder)

log = logging.getLogger("clipood")

__all__ = ["ZeroShotRecipe", "KRNFTRecipe", "run_signature", "check_resume"]

class ZeroShotRecipe:
    """Zero-shot MCM / NegLabel: accelerator, benchmark and backbone, label features, cached image features."""

    title = "Zero-shot OOD detection"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.notes: list[str] = []
        self.local = False  # patch features in the evaluation cache (an adapter requires local_features)

    claimed = False

    def claim(self) -> None:
        """output_dir locked for this run (once), temporary files of killed writers removed: before any model,
        image or cache is touched. The folders and the environment were checked when the config was loaded
        (:func:`clipood_recipes.configure.load_settings`, before torch was imported)."""
        if not self.claimed:
            claim_output_dir(self.cfg["output_dir"], cache_root(self.cfg))
            self.claimed = True

    def setup(self) -> None:
        cfg = self.cfg
        self.claim()
        use_cpu_threads()
        self.ev = ev = typed(EvalSettings, cfg["eval"])                 # the evaluation section, once
        check_scores(ev)                                                 # eval.scores names and options
        self.accelerator = make_accelerator(cfg["cpu"], cfg.get("log_with"), cfg["output_dir"])  # GPU if any
        setup_logging(self.accelerator.is_main_process)
        seed_everything(cfg["seed"])
        self.data = DataSettings.from_config(cfg)                        # where the images and words are
        self.bench = setup_benchmark(self.data, self.accelerator, model=cfg["model"],  # data checked, then the
                                     pretrained=cfg.get("pretrained"),  # backbone
                                     convention=cfg["eval"]["convention"], progress=bool(cfg["progress"]))
        self.splits = prepare_splits(self.bench, cfg["negatives"], self.accelerator,  # label sets, image features
                                     batch_size=ev.batch_size, cache_dir=self.data.cache_dir,
                                     data_root=self.data.data_root, progress=cfg["progress"], local=self.local)
        self.rows, self.raw = evaluate_detectors(zero_shot_detectors(ev), self.splits, ev)
        self.notes = list(self.bench.notes) + chance_warnings(
            self.rows, {sf.split.name: sf.num_id for sf in self.splits}, cfg["model"])
        self._posthoc_rows(None, self.splits)                            # issue 22: eval.scores (none by default)

    def _posthoc_rows(self, method, splits) -> None:
        """Issue 22: the rows of ``eval.scores`` (clipood.evaluation.posthoc_eval) for zero-shot CLIP (``method``
        None) or a trained method; nothing when eval.scores is empty (the default)."""
        if not self.cfg["eval"].get("scores"):
            return
        if getattr(self, "posthoc", None) is None:
            self.posthoc = PosthocRun(self.ev, posthoc_sources(self.cfg), self.bench, self.accelerator, self.splits)
        rows, notes = evaluate_scores(self.posthoc, method, splits, self.posthoc.ev, {r["method"] for r in self.rows})
        self.rows += rows
        self.notes += [n for n in notes if n not in self.notes]

    trained = False  #: whether the Base classes were trained on (the tables' headings say so)

    def headings(self) -> dict[str, str]:
        """results.md table headings: split, data, ID classes, backbone, metric convention."""
        cfg = self.cfg
        return {sf.split.name: split_heading(sf.split.name, data=data_label(cfg["benchmark"], sf.split, mini_seed=cfg["mini"]["seed"],
                                                                    id_data=cfg.get("id_data")), num_classes=sf.num_id,
                                             backbone=backbone_label(cfg["model"], cfg.get("pretrained")), convention=cfg["eval"]["convention"],
                                             trained=self.trained) for sf in self.splits}

    #: the method whose detector folder ``save`` writes, and its adapter (None = zero-shot)
    detector_method = "NegLabel (zero-shot)"
    detector_adapter = None
    detector_cfg = None  #: the config that trained it (a variant's; None = the recipe's)

    def save(self) -> None:
        if not self.accelerator.is_main_process:
            return
        from clipood.detector import has_random_weights
        from clipood.runtime.threads import summary

        self.notes.append(summary())

        from .detect import save_run_detector

        if has_random_weights(self.bench.backbone):
            self.notes.append(f"no detector folder: {self.cfg['model']} has random weights")
        else:
            det_cfg = {**(self.detector_cfg or self.cfg), "output_dir": self.cfg["output_dir"]}
            det_dir = save_run_detector(det_cfg, self.bench, self.splits, self.raw, self.detector_method,
                                        self.detector_adapter)
            self.notes.append(f"detector ({self.detector_method}) saved in {det_dir}: clipood detect {det_dir} IMAGES")
        md = write_outputs(self.rows, self.raw, self.cfg["output_dir"], self.title, self.notes,
                           plots=self.cfg["eval"]["plots"], headings=self.headings())
        write_json(Path(self.cfg["output_dir"]) / "config.json", self.cfg)
        print("\n".join(self.notes))
        print(summary_table(self.rows))
        print(f"wrote {md}, results.json, config.json and plots in {self.cfg['output_dir']}")
        release_output_dirs()



class KRNFTRecipe(ZeroShotRecipe):
    """Few-shot crops → adapter + loss terms (Eq. 10) → the Accelerate loop → evaluation on every split."""

    trained = True

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.title = f"{cfg['method_name']} vs zero-shot NegLabel"

    def setup(self, also: tuple = ()) -> None:
        """``also``: more configs that will train after this setup (ablation variants)."""
        for cfg in (self.cfg, *also):
            check_option_folders(cfg)
            check_resume(cfg)  # before the folder is claimed (it may be the run this one stacks on) and any work
        self.claim()
        for cfg in (self.cfg, *also):
            check_resume(cfg)  # again under the lock: another run may have written checkpoints meanwhile
            self.local |= "local_features" in adapter_requires(cfg)
        super().setup()

    def train(self, cfg: dict | None = None):
        """Train the adapter of ``cfg`` (default: the recipe's) into its ``output_dir``; returns the adapter."""
        cfg = cfg or self.cfg
        accelerator, out, tcfg = self.accelerator, Path(cfg["output_dir"]), train_config(cfg)
        local = "local_features" in adapter_requires(cfg)
        use_cpu_threads("encode")                                        # crops: the image encoder
        data = self.data if cfg is self.cfg else DataSettings.from_config(cfg)  # a variant's own training pool
        crops = build_crop_data(self.bench, self.splits[0], data, run_crops(cfg), accelerator, local,  # Q ID + Q
                                shots=cfg["shots"], seed=cfg["seed"], progress=bool(cfg["progress"]),  # neg crops
                                train=tcfg)  # batch size and warm-up checked against the sample, before crops
        task = build_training_task(cfg, self.splits[0], self.bench, accelerator)  # adapter + weighted loss terms
        data = CropTrainData(crops, condition=tcfg.condition)
        self._start_trackers(cfg)
        use_cpu_threads("train", heavy=trains_text_encoder(task.adapter))  # 1, or the encoders' policy
        result = fit(task, data, tcfg, accelerator, out, resume=bool(cfg["resume"]),
                     progress=bool(cfg["progress"]), signature=run_signature(cfg),
                     desc=f"train {cfg['method_name']}")
        for tracker in accelerator.trackers if cfg.get("log_with") else ():
            tracker.finish()  # not accelerator.end_training(): that also ends a multi-process group before evaluation
        self.adapter = accelerator.unwrap_model(task).adapter.eval()
        self.detector_method, self.detector_adapter, self.detector_cfg = cfg["method_name"], self.adapter, cfg
        if accelerator.is_main_process:
            save_trained_adapter(self.adapter, out / "adapter")
            plot_loss(_whole_log(out) or result.history, out / "loss.png",  # every session's steps
                      weights=getattr(task, "term_weights", None),
                      title=f"{cfg['method_name']} training loss ({result.steps} steps)")
        accelerator.wait_for_everyone()
        self.notes.append(training_note(cfg["method_name"], result))
        return self.adapter

    def evaluate(self, cfg: dict | None = None) -> None:
        """Rows of the trained adapter on every split (its learned transform applied to each label set)."""
        cfg = cfg or self.cfg
        use_cpu_threads("encode")
        detector, splits, notes = adapter_detector(cfg, self.adapter, self.splits, self.bench)
        ev = self.ev if cfg is self.cfg else typed(EvalSettings, cfg["eval"])  # a variant's own evaluation section
        rows, raw = evaluate_detectors([detector], splits, ev)
        self.notes += notes
        self.rows += rows
        self._posthoc_rows(detector, splits)                             # issue 22: eval.scores on its logits
        for split, by_method in raw.items():
            self.raw[split].update(by_method)

    def save(self) -> None:
        n = self.accelerator.num_processes
        self.notes.append(f"processes: {n} (this session's evaluation, and its training where it trained; every "
                          f"training session is listed in training.json)")
        super().save()

    def _start_trackers(self, cfg: dict) -> None:
        if cfg.get("log_with"):
            import json

            from clipood.config.compose import flat_leaves
            from clipood.training.trackers import BUILTIN_TRACKERS, make_tracker

            name = cfg["method_name"].replace(" ", "_")
            if cfg["log_with"] in BUILTIN_TRACKERS:
                self.accelerator.log_with = [make_tracker(cfg["log_with"], name, cfg["output_dir"])]
            self.accelerator.trackers = []  # one run's trackers (ablation variants each start their own)
            flat = {k: v for k, v in flat_leaves(cfg).items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers(name, config=json.loads(json.dumps(flat)))


def training_note(method: str, result) -> str:
    """What the training stage did, for results.md: trained (how many steps this session), or reused."""
    first = next((s for s in result.sessions if s.get("steps_trained")), None)
    if result.resumed_from and not result.trained_now:
        by = f" with {first['processes']} process(es)" if first else ""
        return (f"{method}: reused checkpoint {result.resumed_from} ({result.steps} steps trained by an earlier "
                f"session{by}); nothing retrained")
    resumed = f" (resumed from {result.resumed_from}; {result.seconds:.1f}s over all sessions)" if result.resumed_from \
        else ""
    return f"{method}: {result.trained_now} of {result.steps} steps trained in this session{resumed}" + (
        "" if result.resumed_from else f" in {result.seconds:.1f}s")


def _whole_log(out: Path) -> list[dict]:
    import json

    path = out / "train_log.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def posthoc_sources(cfg: dict) -> PosthocSources:
    """What the post-hoc scores read from the run besides ``eval``: caches, data, ID template, training pool."""
    return PosthocSources(cache_dir=cache_root(cfg), data_root=cfg.get("data_root"),
                          id_template=cfg["negatives"].get("id_template") or "a photo of a {}.",
                          train_data=cfg.get("train_data"), benchmark=cfg["benchmark"], classes=cfg.get("classes"),
                          train_classes=cfg.get("train_classes"), shots=cfg.get("shots"), seed=int(cfg["seed"]),
                          progress=bool(cfg.get("progress")))
