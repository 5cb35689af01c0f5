"""The fine-tuned visual encoder baselines (KR-NFT Tab. 1's "traditional methods", NegLabel's protocol) as a recipe:
the last ``finetune.trainable_blocks`` blocks of the CLIP image tower (with pooling and projection) are fine-tuned
with CE against the zero-shot text classifier on the ID training images, reading the frozen trunk's outputs from
a cache (:mod:`clipood.training.finetune`, as NPOS does), through Accelerate; the post-hoc scores of
:mod:`clipood.posthoc` are then evaluated on the fine-tuned encoder's unit features z and logits 100·z·Wᵀ.

Fitted scores (KNN, MDS, ViM) fit their ID statistics on the fine-tuned features of the training images, whose
classes are the Base classes: they are evaluated on the splits with those classes (Base, unseen styles) only; the
logit scores on every split (on unseen classes the head transfers, the classifier is that split's zero-shot one).
Scores that need pre-projection features, pixels or label files (ReAct, ASH, DICE, GradNorm, ODIN, EOE) are not
offered here."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

from .krnft import ZeroShotRecipe
from .seed_common import accelerate_steps, scored_method, with_features

__all__ = ["FinetuneRecipe", "TrunkEncoder", "train_head", "posthoc_methods", "FIT_SCORES", "LOGIT_SCORES"]

LOGIT_SCORES = ("msp", "max_logit", "energy", "gen")
FIT_SCORES = ("knn", "mds", "rmds", "vim")


def check_scores(names) -> list[str]:
    from clipood.posthoc.registry import get_score

    out = []
    for n in names:
        info = get_score(n)  # an unknown name: one line with a "did you mean"
        if info.name not in LOGIT_SCORES + FIT_SCORES:
            raise ClipoodError(f"finetune.scores: {n} needs pre-projection features, pixels or a label file; the "
                               f"fine-tuned encoder offers {', '.join(LOGIT_SCORES + FIT_SCORES)}")
        out.append(info.name)
    return out


class TrunkEncoder:
    """The frozen trunk as a feature extractor for :func:`clipood.clip.image_features.extract_features` (its
    outputs cached under the backbone's identifier + the split point)."""

    def __init__(self, backbone, split):
        self.backbone, self.split = backbone, split
        self.identifier = f"{backbone.identifier}|trunk:{split.kind}:{split.num_blocks - split.trainable_blocks}"
        self.preprocess = backbone.preprocess

    @torch.no_grad()
    def encode_images(self, images, local: bool = False):
        return self.split.trunk(images.to(self.backbone.device, self.backbone.dtype)).float()


def train_head(accelerator, model, inputs: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int,
               lr: float, weight_decay: float, seed: int = 0, progress: bool = False) -> list[dict]:
    """``steps`` AdamW steps of CE(model(h), y) on batches of cached trunk outputs (``randperm`` of a generator
    seeded ``seed``; batch-norm statistics frozen, as :func:`clipood.training.finetune.finetune_step`)."""
    from clipood.training.finetune import _freeze_norm_stats

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    prepared, opt = accelerator.prepare(model, opt)
    gen = torch.Generator().manual_seed(int(seed))
    n, b = inputs.shape[0], min(int(batch_size), inputs.shape[0])

    def loss_fn(step):
        prepared.train()
        _freeze_norm_stats(prepared)
        idx = torch.randperm(n, generator=gen)[:b]
        x = inputs[idx].to(accelerator.device)
        ce = F.cross_entropy(prepared(x), labels[idx].long().to(accelerator.device))
        return {"loss": ce, "ce_loss": ce}

    history = accelerate_steps(accelerator, prepared, opt, steps, loss_fn, progress=progress,
                               desc="fine-tune image encoder")
    accelerator.unwrap_model(prepared).eval()
    return history


def posthoc_methods(names, train_z: torch.Tensor, train_y: torch.Tensor, weight: torch.Tensor,
                    logit_scale: float, *, knn_k: int = 50, vim_dim: int = 256, suffix: str = " (fine-tuned)"):
    """Rows of post-hoc scores on unit features z with the head 100·z·L2(W)ᵀ; fitted statistics from
    (``train_z``, ``train_y``). Returns ``{name: ScoredMethod}``, and the names fitted (Base-class splits only)."""
    from clipood.posthoc.fit import GaussianFit, KNNFit, ViMFit, fit_statistics
    from clipood.posthoc.heads import LinearHead
    from clipood.posthoc.registry import get_score

    scale = 100.0
    head = LinearHead.from_text_features(weight, scale)
    fits = {"knn": lambda: KNNFit(), "mds": lambda: GaussianFit(weight.shape[0]),
            "rmds": lambda: GaussianFit(weight.shape[0]), "vim": lambda: ViMFit(head, dim=vim_dim)}
    todo = {n: fits[n]() for n in names if n in FIT_SCORES}
    stats = fit_statistics(todo, [(train_z, train_y)]) if todo else {}
    methods = {}
    for name in names:
        info = get_score(name)
        extra = {"k": int(knn_k)} if name == "knn" else {}

        def fn(batch, sf, info=info, extra=extra, name=name):
            z = batch["image_features"].float()
            w = weight if name in FIT_SCORES else sf.text_features[: sf.num_id]
            logits = scale * z @ F.normalize(w.float(), dim=-1).T
            args = {"logits": logits, "features": z, "head": head}
            kw = info.stats_kwargs(stats[name]) if name in stats else {}
            pos = [args[i] for i in info.inputs if i != "stats"]  # the statistics come as keywords
            return info.fn(*pos, **kw, **extra).float(), logits.argmax(1)

        methods[name] = scored_method(f"{_TITLES.get(name, name)}{suffix}", fn, logit_scale)
    return methods, set(todo)


_TITLES = {"msp": "MSP", "max_logit": "MaxLogit", "energy": "Energy", "gen": "GEN", "knn": "KNN", "mds": "MDS",
           "rmds": "RMDS", "vim": "ViM"}


class FinetuneRecipe(ZeroShotRecipe):
    """setup (zero-shot rows) → cache the trunk's outputs → fine-tune the head with CE → post-hoc rows → save."""

    title = "Fine-tuned CLIP image encoder + post-hoc scores vs zero-shot MCM / NegLabel"
    trained = True

    def setup(self) -> None:
        self.check()
        super().setup()

    def check(self) -> None:
        """The finetune section, before any work (also the comparison's extra=[finetune])."""
        f = self.cfg["finetune"]
        self.scores = check_scores(f["scores"])
        for k in ("steps", "batch_size", "trainable_blocks", "knn_k", "vim_dim"):
            if isinstance(f[k], bool) or not isinstance(f[k], int) or f[k] < 1:
                raise ClipoodError(f"finetune.{k} must be an integer >= 1, got {f[k]!r}")

    def _trunk_features(self, spec, what: str, classnames=None):
        from clipood.clip.image_features import extract_features
        from clipood.config.checks import cache_root
        from clipood.datasets.dataset import build_dataset

        if classnames is not None:  # the training pool, relabelled to the ID classes by name
            from clipood.datasets.checks import training_dataset

            ds = training_dataset(spec, classnames, classes=self.cfg.get("classes"), root=self.cfg.get("data_root"))
            ds.transform = self.bench.backbone.preprocess
        else:
            ds = build_dataset(spec, transform=self.bench.backbone.preprocess, root=self.cfg.get("data_root"))
        return extract_features(self.encoder, ds, batch_size=self.cfg["eval"]["batch_size"],
                                accelerator=self.accelerator, cache_dir=cache_root(self.cfg) / "features",
                                progress=bool(self.cfg["progress"]), desc=what)

    def train(self):
        from clipood.runtime.recipe import use_cpu_threads
        from clipood.training.finetune import FinetunedClassifier, split_image_tower

        f, bb, base = self.cfg["finetune"], self.bench.backbone, self.splits[0]
        self.tower = split_image_tower(bb, int(f["trainable_blocks"]))
        self.encoder = TrunkEncoder(bb, self.tower)
        spec = self.bench.train_spec or self.cfg.get("train_data")
        if not spec:
            raise ClipoodError("no ID training data: set train_data (a dataset spec) for this benchmark")
        use_cpu_threads("encode")
        self.train_feats = self._trunk_features(spec, "train/trunk", base.split.classnames)
        self.model = FinetunedClassifier(self.tower.head, base.text_features[: base.num_id], 100.0,
                                         learn_classifier=bool(f["learn_classifier"])).to(bb.device)
        use_cpu_threads("train", heavy=True)
        self.history = train_head(self.accelerator, self.model, self.train_feats["features"],
                                  self.train_feats["labels"], steps=int(f["steps"]), batch_size=int(f["batch_size"]),
                                  lr=float(f["lr"]), weight_decay=float(f["weight_decay"]), seed=int(self.cfg["seed"]),
                                  progress=bool(self.cfg["progress"]))
        self.model = self.accelerator.unwrap_model(self.model).eval()
        out = Path(self.cfg["output_dir"])
        if self.accelerator.is_main_process:
            from clipood.evaluation.report import plot_loss
            from clipood.io import save_safetensors

            out.mkdir(parents=True, exist_ok=True)
            save_safetensors(self.model.state_dict(), out / "finetuned_head.safetensors",
                             metadata={"trainable_blocks": f["trainable_blocks"], "backbone": bb.identifier})
            plot_loss(self.history, out / "loss.png", title=f"fine-tuned encoder CE ({len(self.history)} steps)")
        self.accelerator.wait_for_everyone()
        self.notes.append(f"fine-tuned encoder: the last {f['trainable_blocks']} of {self.tower.num_blocks} blocks "
                          f"of the image tower, {len(self.history)} CE steps on {len(self.train_feats['labels'])} ID "
                          f"training images (last loss {self.history[-1]['total']:.4f}); saved "
                          f"{out / 'finetuned_head.safetensors'}")
        return self.model

    @torch.no_grad()
    def _z(self, h: torch.Tensor) -> torch.Tensor:
        dev = self.bench.backbone.device
        return torch.cat([self.model.features(x.to(dev)).float().cpu() for x in h.split(256)])

    def evaluate(self) -> None:
        from clipood.config.settings import EvalSettings, typed
        from clipood.evaluation.runner import evaluate_detectors
        from clipood.runtime.recipe import use_cpu_threads

        use_cpu_threads("encode")
        f, base = self.cfg["finetune"], self.splits[0]
        trunk = [replace(sf, id_feats={n: self._trunk_features(s, f"{sf.split.name}/{n}/trunk")
                                       for n, s in sf.split.id_sets.items()},
                         ood_feats={n: self._trunk_features(s, f"{sf.split.name}/{n}/trunk")
                                    for n, s in sf.split.ood_sets.items()}) for sf in self.splits]
        splits = with_features(trunk, self._z)
        weight = self.model.weight.detach().cpu()
        methods, fitted = posthoc_methods(self.scores, self._z(self.train_feats["features"]),
                                          self.train_feats["labels"], weight, float(self.cfg["eval"]["logit_scale"]),
                                          knn_k=int(f["knn_k"]), vim_dim=int(f["vim_dim"]))
        same = [sf for sf in splits if list(sf.split.classnames) == list(base.split.classnames)]
        other = [sf for sf in splits if sf not in same]
        if f["learn_classifier"] and other:
            self.notes.append("fine-tuned encoder: the learned classifier holds the Base classes only; splits with "
                              "other classes are left out")
            other = []
        for group, names in ((same, list(methods)), (other, [n for n in methods if n not in fitted])):
            if group and names:
                rows, raw = evaluate_detectors([methods[n] for n in names], group,
                                               typed(EvalSettings, self.cfg["eval"]))
                self.rows += rows
                for split, by_method in raw.items():
                    self.raw[split].update(by_method)
        if fitted and other:
            self.notes.append(f"fine-tuned encoder: {', '.join(sorted(fitted))} fit on the Base classes' training "
                              f"images and are not scored on splits with other ID classes")
