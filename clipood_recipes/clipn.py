"""CLIPN as a recipe: image–text pairs → the frozen CLIP's image and caption features → the 'no' text encoder
(:class:`adapters.clipn.NoTextEncoder`) trained with the binary-opposite and semantic-opposite losses through
Accelerate → ``no_encoder.safetensors`` (written atomically, the release's key names) → CTW / ATD rows beside
zero-shot MCM on every split. ``clipn.checkpoint=FILE`` evaluates a user's CLIPN checkpoint instead of training.

Pairs (``clipn.pairs``): ``kind: mini`` renders the mini world's pretraining scenes with their captions (the tiny
CLIP's own pretraining data: :mod:`clipood.mini.pretrain`), ``kind: folder`` reads ``<path>/captions.tsv``
(``image<TAB>caption`` lines, images relative to the folder), ``kind: hf`` a Hugging Face ``save_to_disk`` folder
with an image and a text column."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError

from .krnft import ZeroShotRecipe
from .seed_common import accelerate_steps, scored_method

__all__ = ["CLIPNRecipe", "train_no_encoder", "load_pairs", "load_no_encoder_state", "save_no_encoder", "CHECKPOINT_SUFFIXES"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
WEIGHTS = "no_encoder.safetensors"


def check_checkpoint_file(path) -> Path:
    """Before any work: the checkpoint exists and has a known suffix."""
    p = Path(path)
    if not p.is_file():
        raise ClipoodError(f"clipn.checkpoint={path}: no such file; pass a CLIPN checkpoint (.pt or .safetensors) "
                           f"or leave clipn.checkpoint unset to train one")
    if p.suffix not in CHECKPOINT_SUFFIXES:
        raise ClipoodError(f"clipn.checkpoint={path}: not a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)} "
                           f"expected)")
    return p


def load_no_encoder_state(path) -> dict[str, torch.Tensor]:
    """The state dict of a CLIPN checkpoint (safetensors, or a torch file holding a state dict, optionally under
    ``state_dict``), read without running code; a file that is neither is a one-line error."""
    from clipood.io import load_safetensors

    p = check_checkpoint_file(path)
    if p.suffix == ".safetensors":
        state = load_safetensors(p)
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise ClipoodError(f"clipn.checkpoint={path}: not a readable torch checkpoint "
                               f"({type(e).__name__}); pass the release's .pt or clipood's {WEIGHTS}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ClipoodError(f"clipn.checkpoint={path}: holds no state dict of tensors")
    return state


def release_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NoTextEncoder's names → the release's ``*_no`` names (the inverse of ``no_path_state_from_release``)."""
    out = {}
    for k, v in state.items():
        head, dot, rest = k.partition(".")
        out[("prompt_no" if head == "prompt_no" else f"{head}_no") + dot + rest] = v
    return out


def save_no_encoder(encoder, path) -> None:
    from clipood.io import save_safetensors

    save_safetensors(release_names(encoder.state_dict()), path, metadata={"format": "clipn-no-path"})


# ------------------------------------------------------------------------------------------------- pairs
def load_pairs(spec: dict, image_size: int, transform=None, root=None) -> tuple[torch.Tensor, list[str]]:
    """(preprocessed images N×3×H×W, captions) of ``clipn.pairs``."""
    kind = spec.get("kind", "mini")
    if kind == "mini":
        from clipood.mini.pretrain import render_pool, to_tensor
        import numpy as np

        from clipood.mini.world import caption

        n, seed = int(spec.get("num", 2048)), int(spec.get("seed", 1234))
        if n < 2:
            raise ClipoodError(f"clipn.pairs.num must be >= 2, got {n}")
        imgs, scenes = render_pool(n, seed, image_size=image_size, progress=False)
        gen = np.random.default_rng(seed + 7)  # the pretraining's caption generator
        return to_tensor(imgs), [caption(s, gen) for s in scenes]
    if kind not in ("folder", "hf"):
        raise ClipoodError(f"clipn.pairs.kind={kind!r}: choose mini, folder (captions.tsv) or hf (save_to_disk)")
    if transform is None:
        raise ClipoodError("image–text pairs from files need the backbone's preprocessing")
    path = Path(spec.get("path") or "")
    if not path.is_absolute() and root:
        path = Path(root) / path
    if kind == "folder":
        return _folder_pairs(path, transform)
    return _hf_pairs(path, spec, transform)


def _folder_pairs(path: Path, transform):
    from PIL import Image

    tsv = path / "captions.tsv"
    if not tsv.is_file():
        raise ClipoodError(f"clipn.pairs.path={path}: no captions.tsv (lines 'image<TAB>caption') in that folder")
    images, texts = [], []
    for i, line in enumerate(tsv.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, text = line.partition("\t")
        if not sep or not text.strip():
            raise ClipoodError(f"{tsv} line {i}: expected 'image<TAB>caption'")
        f = path / name
        if not f.is_file():
            raise ClipoodError(f"{tsv} line {i}: image {name} is not in {path}")
        with Image.open(f) as im:
            images.append(transform(im.convert("RGB")))
        texts.append(text.strip())
    if len(texts) < 2:
        raise ClipoodError(f"{tsv}: CLIPN needs at least 2 image–caption pairs")
    return torch.stack(images), texts


def _hf_pairs(path: Path, spec: dict, transform):
    try:
        from datasets import load_from_disk
    except ImportError:
        raise ClipoodError("clipn.pairs.kind=hf needs the datasets package (pip install datasets)") from None
    if not path.is_dir():
        raise ClipoodError(f"clipn.pairs.path={path}: not a save_to_disk folder")
    ds = load_from_disk(str(path))
    icol, tcol = spec.get("image_column", "image"), spec.get("text_column", "text")
    missing = [c for c in (icol, tcol) if c not in ds.column_names]
    if missing:
        raise ClipoodError(f"clipn.pairs: the dataset at {path} has no column {missing[0]!r} (columns: "
                           f"{', '.join(ds.column_names)}); set clipn.pairs.image_column / text_column")
    images = [transform(r[icol].convert("RGB")) for r in ds]
    return torch.stack(images), [str(r[tcol]) for r in ds]


# ------------------------------------------------------------------------------------------------- training
def train_no_encoder(accelerator, encoder, image_features, text_features, tokens, *, steps: int, batch_size: int,
                     lr: float, weight_decay: float, loss_weight: float = 0.5, tso_mode: str = "L2",
                     logit_scale: float = 100.0, seed: int = 0, progress: bool = False):
    """Train CLIPN's 'no' encoder: each step draws ``batch_size`` pairs (``randperm`` of a generator seeded
    ``seed``) and one prompt index per pair in [0, num_prompts] (the release's ``randint(0, 17)``), then one AdamW
    step (the release's betas and eps) on ``clipn_loss(v, t, L2(no(tokens)), logit_scale)``. ``image_features``
    and ``text_features`` are the frozen CLIP's unit features of the pairs. With several processes each takes its
    share of the same global batch. Returns (the trained encoder, the per-step log)."""
    from adapters.clipn import CLIPN_DEFAULTS, clipn_loss

    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=weight_decay, betas=CLIPN_DEFAULTS["betas"],
                            eps=CLIPN_DEFAULTS["eps"])
    model, opt = accelerator.prepare(encoder, opt)
    gen = torch.Generator().manual_seed(int(seed))
    n, rank, world = image_features.shape[0], accelerator.process_index, accelerator.num_processes
    num_prompts = encoder.num_prompts

    def loss_fn(step):
        idx = torch.randperm(n, generator=gen)[:batch_size]   # the same global batch on every process
        prompt = torch.randint(0, num_prompts + 1, (batch_size,), generator=gen)
        if world > 1:
            idx, prompt = idx.chunk(world)[rank], prompt.chunk(world)[rank]
        t_no = F.normalize(model(tokens[idx], prompt.to(tokens.device)).float(), dim=-1)
        return clipn_loss(image_features[idx], text_features[idx], t_no, logit_scale, weight=loss_weight,
                          tso_mode=tso_mode)

    history = accelerate_steps(accelerator, model, opt, steps, loss_fn, progress=progress,
                               desc="train CLIPN 'no' encoder")
    return accelerator.unwrap_model(model).eval(), history


# ------------------------------------------------------------------------------------------------- recipe
class CLIPNRecipe(ZeroShotRecipe):
    """setup (zero-shot rows, MCM included) → train the 'no' encoder (or load it) → CTW / ATD rows → save."""

    title = "CLIPN ('no' text encoder: CTW / ATD) vs zero-shot MCM"
    trained = False  # the Base classes are never trained on: CLIPN learns from captions

    def setup(self) -> None:
        self.check()
        super().setup()

    def check(self) -> None:
        """Before any model or image is touched (also the comparison's extra=[clipn])."""
        if self.cfg["clipn"]["checkpoint"]:
            check_checkpoint_file(self.cfg["clipn"]["checkpoint"])

    def train(self):
        from adapters.clipn import NoTextEncoder

        c, acc, bb = self.cfg["clipn"], self.accelerator, self.bench.backbone
        out = Path(self.cfg["output_dir"])
        self.encoder = NoTextEncoder(bb, num_prompts=int(c["num_prompts"])).to(bb.device)
        if c["checkpoint"]:
            self.encoder.load_release_state(load_no_encoder_state(c["checkpoint"]))
            self.notes.append(f"CLIPN: 'no' encoder loaded from {c['checkpoint']} (not trained)")
            return self.encoder
        from clipood.runtime.recipe import use_cpu_threads

        use_cpu_threads("encode")
        images, texts = load_pairs(c["pairs"], bb.image_size, bb.preprocess, self.cfg.get("data_root"))
        with torch.no_grad():
            v = torch.cat([bb.encode_images(x) for x in images.split(256)]).to(bb.device)
            tokens = bb.tokenize(texts)
            t = torch.cat([F.normalize(bb.model.encode_text(x).float(), dim=-1) for x in tokens.split(256)])
        b = int(c["batch_size"])
        if not 2 <= b <= len(texts):
            raise ClipoodError(f"clipn.batch_size={b} must be in [2, {len(texts)}] (the number of pairs)")
        self.history = self._fit(v, t, tokens, b)
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_no_encoder(acc.unwrap_model(self.encoder), out / WEIGHTS)
            from clipood.evaluation.report import plot_loss

            plot_loss(self.history, out / "loss.png", weights={k: c["loss_weight"] for k in self.history[0]
                                                               if k.endswith("_loss")},
                      title=f"CLIPN 'no' encoder ({len(self.history)} steps)")
        acc.wait_for_everyone()
        last = self.history[-1]
        self.notes.append(f"CLIPN: 'no' encoder trained {len(self.history)} steps on {len(texts)} image–text pairs "
                          f"({c['pairs'].get('kind', 'mini')}); last loss {last['total']:.4f} (bin_yes "
                          f"{last['bin_yes_loss']:.4f}, bin_no {last['bin_no_loss']:.4f}, tso {last['tso_loss']:.4f}); "
                          f"saved {out / WEIGHTS}")
        return self.encoder

    def _fit(self, v, t, tokens, batch):
        c = self.cfg["clipn"]
        self.encoder, history = train_no_encoder(
            self.accelerator, self.encoder, v, t, tokens, steps=int(c["steps"]), batch_size=batch, lr=float(c["lr"]),
            weight_decay=float(c["weight_decay"]), loss_weight=float(c["loss_weight"]), tso_mode=c["tso_mode"],
            logit_scale=float(self.bench.backbone.logit_scale), seed=int(self.cfg["seed"]),
            progress=bool(self.cfg["progress"]))
        return history

    @torch.no_grad()
    def class_features(self, names) -> tuple[torch.Tensor, torch.Tensor]:
        """('yes', 'no') class features of ``names``: template ensembles as the release builds them."""
        from adapters.clipn import ensemble_text_features

        bb, templates = self.bench.backbone, list(self.cfg["clipn"]["templates"])
        self.encoder.eval()
        yes = ensemble_text_features(bb.model.encode_text, bb.tokenize, names, templates)
        no = ensemble_text_features(self.encoder, bb.tokenize, names, templates)
        return yes.cpu(), no.cpu()

    def evaluate(self) -> None:
        from adapters.clipn import atd_score, ctw_score
        from clipood.config.settings import EvalSettings, typed
        from clipood.evaluation.runner import evaluate_detectors

        scale, test = float(self.cfg["eval"]["logit_scale"]), float(self.cfg["clipn"]["test_scale"])
        feats = {}

        def logits(batch, sf):
            key = tuple(sf.split.classnames)
            if key not in feats:
                feats[key] = self.class_features(list(key))
            yes, no = feats[key]
            x = batch["image_features"].float()
            return test * x @ yes.T, test * x @ no.T

        def ctw(batch, sf):
            lo, ln = logits(batch, sf)
            return ctw_score(lo, ln), lo.argmax(1)

        def atd(batch, sf):
            lo, ln = logits(batch, sf)
            return atd_score(lo, ln), lo.argmax(1)

        methods = [scored_method("CLIPN-CTW", ctw, scale), scored_method("CLIPN-ATD", atd, scale)]
        rows, raw = evaluate_detectors(methods, self.splits, typed(EvalSettings, self.cfg["eval"]))
        self.rows += rows
        for split, by_method in raw.items():
            self.raw[split].update(by_method)
