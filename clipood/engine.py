"""The one training loop (on Hugging Face Accelerate): optimiser and schedule from config, mixed precision from
Accelerate, progress bar, trackers, atomic checkpoints with exact resume, deterministic by seed.

Data order is a pure function of (seed, epoch): every epoch draws a permutation of the training images, cuts
it into *global* batches of ``batch_size`` images, and rank r of W processes takes the r-th contiguous slice
of each batch. So 1 process and W processes see the same global batches (DDP averages the gradients of equal
slices), and a run resumed mid-epoch replays exactly the batches it had not yet seen.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path


import torch

from .config import flat_leaves
from .errors import ClipoodError
from .io import load_safetensors, make_temp_dir, save_safetensors, write_json

log = logging.getLogger("clipood")


@dataclass
class TrainConfig:
    """Optimisation settings (one YAML section ``train``)."""

    epochs: int = 30
    batch_size: int = 8  # images per global step; each brings Q ID crops and Q negative crops
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9
    schedule: str = "cosine"  # constant | cosine
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off
    max_steps: int = 0  # 0 = epochs × steps per epoch; >0 stops early (smoke tests)
    checkpoint_every: int = 0  # steps; 0 = only at epoch ends
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    condition: str = "self"  # meta-net input for crops: self | top_crop (official code)

    def __post_init__(self):
        for k in ("epochs", "batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ClipoodError(f"train.{k} must be an integer >= 1, got {v!r}")
        for k in ("warmup_steps", "max_steps", "checkpoint_every", "log_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 0:
                raise ClipoodError(f"train.{k} must be an integer >= 0, got {v!r}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and self.lr > 0
                                              and math.isfinite(self.lr)):
            raise ClipoodError(f"train.lr must be a positive number (e.g. train.lr=0.001), got {self.lr!r}")
        for k in ("weight_decay", "grad_clip", "momentum"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ClipoodError(f"train.{k} must be a number >= 0, got {v!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ClipoodError(f"train.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ClipoodError(f"train.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.condition not in ("self", "top_crop"):
            raise ClipoodError(f"train.condition must be 'self' or 'top_crop', got {self.condition!r}")
        if isinstance(self.keep_checkpoints, bool) or not isinstance(self.keep_checkpoints, int) \
                or self.keep_checkpoints < 1:
            raise ClipoodError("train.keep_checkpoints must be >= 1")


class NonFiniteLoss(ClipoodError):
    pass


# ------------------------------------------------------------------------------------------------ data
class CropTrainData:
    """Training view of a crop cache: image i owns Q ID crops (label y_i) and Q negative crops."""

    def __init__(self, cache, condition: str = "self"):
        self.cache = cache
        self.n = int(cache.image_labels.shape[0])
        if self.n == 0:
            raise ClipoodError("the crop cache holds no training images")
        self.id_rows = _rows_by_image(cache.id_image, self.n)
        self.neg_rows = _rows_by_image(cache.neg_image, self.n)
        self.condition = condition

    def epoch_batches(self, epoch: int, seed: int, batch_size: int, world: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        batches = [perm[s:s + batch_size] for s in range(0, self.n, batch_size)]
        # a final short batch must split evenly over processes (parity with 1 process), else it is dropped
        if batches and len(batches[-1]) % world != 0:
            batches.pop()
        return batches

    def collate(self, positions: list[int], device) -> dict[str, torch.Tensor]:
        c = self.cache
        idr = torch.cat([self.id_rows[p] for p in positions])
        ngr = torch.cat([self.neg_rows[p] for p in positions])
        batch = {"id_features": c.id_features[idr], "id_labels": c.id_labels[idr],
                 "neg_features": c.neg_features[ngr]}
        if self.condition == "top_crop":
            batch["id_condition"] = c.top_features[c.id_image[idr]]
            batch["neg_condition"] = c.top_features[c.neg_image[ngr]]
        if getattr(c, "id_local", None) is not None:  # patch features, when some adapter asked for them
            batch["id_local"], batch["neg_local"] = c.id_local[idr], c.neg_local[ngr]
        return {k: v.to(device) for k, v in batch.items()}


def _rows_by_image(owner: torch.Tensor, n: int) -> list[torch.Tensor]:
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=n).tolist()
    return list(torch.split(order, counts))


# ------------------------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
                meta["state"][str(idx)][k] = {"tensor": f"{idx}.{k}"}
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {}
    for idx, st in meta["state"].items():
        state[int(idx)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                           for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt_root: Path, adapter, optimizer, state: dict, keep: int) -> Path:
    """Write ``step-NNNNNN/`` atomically (temporary folder, then rename) and prune old checkpoints."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{state['step']:06d}"
    tmp = make_temp_dir(ckpt_root, ".tmp-")
    try:
        save_safetensors(adapter.state_dict(), tmp / "adapter.safetensors")
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_safetensors(tensors if tensors else {"_empty": torch.zeros(1)}, tmp / "optimizer.safetensors")
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "trainer_state.json", state)
        if final.exists():
            # never delete in place: a kill mid-delete would leave a half checkpoint under a valid name.
            # Renames are atomic; a kill between the two leaves the previous checkpoint as the latest.
            _discard(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        _discard(old)
    return final


def _discard(folder: Path) -> None:
    """Rename out of the ``step-*`` namespace first (atomic), then delete."""
    trash = folder.with_name(f".tmp-trash-{folder.name}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


CHECKPOINT_FILES = ("adapter.safetensors", "optimizer.safetensors", "optimizer.json", "trainer_state.json")


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete ``step-*`` checkpoint (every file present), or None."""
    cands = sorted(p for p in Path(ckpt_root).glob("step-*") if all((p / f).is_file() for f in CHECKPOINT_FILES))
    return cands[-1] if cands else None


def load_checkpoint(path: Path, adapter, optimizer) -> dict:
    sd = load_safetensors(path / "adapter.safetensors")
    try:
        adapter.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ClipoodError(f"checkpoint {path} does not fit this adapter ({str(e).splitlines()[-1].strip()}); "
                           f"use another output_dir or delete the checkpoints folder") from None
    meta = json.loads((path / "optimizer.json").read_text())
    tensors = load_safetensors(path / "optimizer.safetensors")
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    return json.loads((path / "trainer_state.json").read_text())


def check_resumable(output_dir: str | os.PathLike, signature: dict) -> Path | None:
    """The checkpoint a run in ``output_dir`` would resume from, or None. Raises ClipoodError when that folder
    holds checkpoints of another configuration (recipes call this first, before any expensive work)."""
    ckpt_root = Path(output_dir) / "checkpoints"
    ck = latest_checkpoint(ckpt_root)
    if ck is None:
        return None
    signature = json.loads(json.dumps(signature, default=str))
    old = json.loads((ck / "trainer_state.json").read_text()).get("signature")
    if old != signature:
        a, b = flat_leaves(old or {}), flat_leaves(signature)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ClipoodError(f"{ckpt_root} holds checkpoints of another configuration (differs in: "
                           f"{', '.join(diff[:6])}); set another output_dir, or resume=false to start over")
    return ck


# ------------------------------------------------------------------------------------------------ loop
@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    resumed_from: str | None = None
    seconds: float = 0.0


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        q = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, q)))
    return 1.0


class _StopFlag:
    """SIGTERM / SIGINT → finish the current step, write a checkpoint, then stop."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:  # second signal: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def fit(method, data: CropTrainData, cfg: TrainConfig, accelerator, output_dir: str | os.PathLike, *,
        resume: bool = True, progress: bool = True, signature: dict | None = None) -> TrainResult:
    """Train ``method`` (an adapter + loss terms) on ``data``; checkpoints go to ``output_dir/checkpoints``.

    With ``resume`` the latest checkpoint there is loaded and training continues where it stopped, producing
    the same final weights as an uninterrupted run (bit-identical on CPU with one process).
    """
    import time

    from tqdm.auto import tqdm

    out = Path(output_dir)
    ckpt_root = out / "checkpoints"
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world != 0:
        raise ClipoodError(f"train.batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
    if cfg.batch_size > data.n:
        raise ClipoodError(f"train.batch_size={cfg.batch_size} is larger than the {data.n} training images; lower it")
    steps_per_epoch = len(data.epoch_batches(0, cfg.seed, cfg.batch_size, world))
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise ClipoodError("the adapter has no trainable parameters")
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    signature = json.loads(json.dumps(signature if signature is not None else asdict(cfg), default=str))
    state = {"step": 0, "epoch": 0, "batch": 0, "signature": signature}
    result = TrainResult(steps=0)
    if resume and (ck := check_resumable(out, signature)) is not None:
        state = load_checkpoint(ck, method.adapter, opt)
        result.resumed_from = str(ck)
        if accelerator.is_main_process:
            log.info("resuming from %s (step %d)", ck, state["step"])
    model, opt = accelerator.prepare(method, opt)
    inner = accelerator.unwrap_model(model)
    history_path = out / "train_log.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if state["step"] == 0:
            history_path.write_text("")
        else:
            _truncate_history(history_path, state["step"])
        for stale in ckpt_root.glob(".tmp-*"):  # a checkpoint being written when the process was killed
            shutil.rmtree(stale, ignore_errors=True)
    t0 = time.time()
    step = state["step"]
    bar = tqdm(total=total, initial=step, desc="train", disable=not (progress and accelerator.is_main_process),
               mininterval=1, dynamic_ncols=True)
    stopped = False
    with _StopFlag() as flag:
        for epoch in range(state["epoch"], cfg.epochs):
            batches = data.epoch_batches(epoch, cfg.seed, cfg.batch_size, world)
            first = state["batch"] if epoch == state["epoch"] else 0
            for bi in range(first, len(batches)):
                if step >= total:
                    break
                gb = batches[bi]
                per = len(gb) // world
                batch = data.collate(gb[rank * per:(rank + 1) * per], accelerator.device)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * _lr_factor(cfg, step, total)
                with accelerator.autocast():
                    outd = model(batch)
                loss = outd["loss"]
                if not torch.isfinite(loss.detach()).all():
                    last = latest_checkpoint(ckpt_root)
                    raise NonFiniteLoss(f"loss became {float(loss.detach())} at step {step + 1} (epoch {epoch + 1}); "
                                        f"training stopped, last good checkpoint: {last or 'none'}. Lower train.lr "
                                        f"or the loss weights")
                accelerator.backward(loss)
                if cfg.grad_clip:
                    accelerator.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                state.update(step=step, epoch=epoch, batch=bi + 1)
                logs = {k: float(accelerator.reduce(v.detach().float(), "mean")) for k, v in outd.items()}
                rec = {"step": step, "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **logs}
                result.history.append(rec)
                if accelerator.is_main_process:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
                    with open(history_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if cfg.log_every and step % cfg.log_every == 0 and accelerator.trackers:
                        accelerator.log(logs, step=step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    _ckpt(accelerator, ckpt_root, inner, opt, state, cfg)
                if flag.stop:
                    _ckpt(accelerator, ckpt_root, inner, opt, state, cfg)
                    stopped = True
                    break
            if stopped or step >= total:
                break
            state.update(epoch=epoch + 1, batch=0)
            _ckpt(accelerator, ckpt_root, inner, opt, state, cfg)
    bar.close()
    if stopped:
        raise KeyboardInterrupt(f"stopped by signal at step {step}; rerun the same command to resume")
    state.update(step=step)
    _ckpt(accelerator, ckpt_root, inner, opt, state, cfg)
    result.steps = step
    result.seconds = time.time() - t0
    return result


def _truncate_history(path: Path, step: int) -> None:
    """Keep the log records of steps <= ``step`` (the checkpoint resumed from): a run killed after logging a
    step but before checkpointing it replays that step, which must not appear twice."""
    from .io import atomic_write

    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            continue
    with atomic_write(path) as f:
        f.write("".join(f"{line}\n" for line in keep))


def _ckpt(accelerator, ckpt_root, inner, opt, state, cfg):
    if accelerator.is_main_process:
        save_checkpoint(ckpt_root, inner.adapter, opt, dict(state), cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
