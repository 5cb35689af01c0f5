"""The one training loop (on Hugging Face Accelerate): torch optimiser and ``torch.optim.lr_scheduler`` schedule,
mixed precision from Accelerate, progress bar, trackers, atomic checkpoints with exact resume, deterministic.

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

from ..batch_keys import CONDITION, ID_LABELS, LOCAL, train_key
from ..config.settings import TrainConfig
from ..errors import ClipoodError
from .checkpoints import (check_resumable, finish_pruning, latest_checkpoint, load_checkpoint, save_checkpoint,
                          truncate_history)

log = logging.getLogger("clipood")


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
        """One epoch's global batches: a permutation of the images cut by :func:`batch_sizes`."""
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        out, start = [], 0
        for size in batch_sizes(self.n, batch_size, world):
            out.append(perm[start:start + size])
            start += size
        return out

    def collate(self, positions: list[int], device) -> dict[str, torch.Tensor]:
        c = self.cache
        idr = torch.cat([self.id_rows[p] for p in positions])
        ngr = torch.cat([self.neg_rows[p] for p in positions])
        batch = {train_key("id"): c.id_features[idr], ID_LABELS: c.id_labels[idr],
                 train_key("neg"): c.neg_features[ngr]}
        if self.condition == "top_crop":
            batch[train_key("id", CONDITION)] = c.top_features[c.id_image[idr]]
            batch[train_key("neg", CONDITION)] = c.top_features[c.neg_image[ngr]]
        if getattr(c, "id_local", None) is not None:  # patch features, when some adapter asked for them
            batch[train_key("id", LOCAL)], batch[train_key("neg", LOCAL)] = c.id_local[idr], c.neg_local[ngr]
        return {k: v.to(device) for k, v in batch.items()}


def batch_sizes(n_images: int, batch_size: int, world: int = 1) -> list[int]:
    """Sizes of one epoch's global batches of ``n_images`` images: full batches of ``batch_size``, then the
    remainder, which is kept only when it splits evenly over the ``world`` processes (parity with 1 process).
    The one rule of an epoch: :meth:`CropTrainData.epoch_batches` cuts by it and :func:`check_schedule` counts
    with it."""
    sizes = [batch_size] * (n_images // batch_size) + ([n_images % batch_size] if n_images % batch_size else [])
    if sizes and sizes[-1] % world != 0:
        sizes.pop()
    return sizes


def _rows_by_image(owner: torch.Tensor, n: int) -> list[torch.Tensor]:
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=n).tolist()
    return list(torch.split(order, counts))


# ------------------------------------------------------------------------------------------------ loop
@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    resumed_from: str | None = None
    seconds: float = 0.0  #: training time of the whole run, earlier sessions included
    trained_now: int = 0  #: optimiser steps this session took (0: a complete checkpoint was reused)
    sessions: list[dict] = field(default_factory=list)  #: every session of the run (steps, processes, resumed)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` (0-based) of ``total``: warm-up — linear
    ``(s+1)/warmup``, or constant ``warmup_lr / lr`` when ``warmup_lr > 0`` —, then constant or cosine
    ``½(1 + cos(π·q))`` with q the post-warm-up progress (``cosine_period`` P > 0: q = (s − warmup)/P, periodic,
    as torch's ``CosineAnnealingLR(T_max=P)`` stepped every step)."""
    warm = cfg.warmup_steps
    if warm and step < warm:
        return cfg.warmup_lr / cfg.lr if getattr(cfg, "warmup_lr", 0.0) > 0 else (step + 1) / warm
    if cfg.schedule == "cosine":
        period = getattr(cfg, "cosine_period", 0)
        if period:
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / period))
        q = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, q)))
    return 1.0


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` or ``SGD`` (optionally Nesterov) over the trainable parameters."""
    # foreach: one call per update op for all parameters (the default on GPUs; on the CPU torch loops in Python
    # over the parameters, slower for many small ones, same values)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov, foreach=True)


def optimizer_step(opt) -> None:
    """``opt.step()``. An Accelerate optimizer with no gradient scaler, no XLA and synchronised gradients only calls
    its torch optimizer: that is called directly (Accelerate's step looks up an optional package twice a step)."""
    inner = getattr(opt, "optimizer", None)
    state, grads = getattr(opt, "accelerator_state", None), getattr(opt, "gradient_state", None)
    if (type(inner) in (torch.optim.AdamW, torch.optim.SGD) and getattr(opt, "scaler", True) is None
            and state is not None and getattr(state, "distributed_type", "XLA") != "XLA"
            and getattr(grads, "sync_gradients", False) is True):
        inner.step()
    else:
        opt.step()


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total: int,
                   start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`lr_factor`, positioned at ``start_step`` (a resumed run continues its schedule;
    the base rate is always ``cfg.lr``, whatever rate a loaded optimiser state last used)."""
    for g in optimizer.param_groups:
        g["initial_lr"] = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total),
                                             last_epoch=start_step - 1)


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


def total_steps(data: "CropTrainData", cfg: TrainConfig, world: int) -> int:
    """Optimiser steps of the whole run on ``data`` (:func:`run_steps` of its images)."""
    return run_steps(cfg, data.n, world)


def run_steps(train: "TrainConfig | dict", n_images: int, world: int = 1) -> int:
    """Optimiser steps of a run on ``n_images`` training images: :func:`batch_sizes` per epoch × epochs, cut at
    ``max_steps``. The batch size must split over the processes and fit the images."""
    get = train.get if isinstance(train, dict) else lambda k, d=None: getattr(train, k, d)
    bs, epochs, max_steps = get("batch_size"), get("epochs"), get("max_steps", 0)
    if bs % world != 0:
        raise ClipoodError(f"train.batch_size={bs} must be divisible by the number of processes ({world})")
    if bs > n_images:
        raise ClipoodError(f"train.batch_size={bs} is larger than the {n_images} training images; lower it")
    total = len(batch_sizes(n_images, bs, world)) * epochs
    return min(total, max_steps) if max_steps else total


def check_schedule(train: "TrainConfig | dict", n_images: int, world: int = 1) -> int:
    """Optimiser steps of a run on ``n_images`` training images (:func:`run_steps`, the count the loop runs),
    known before any crop is encoded: the warm-up must also fit the run."""
    total = run_steps(train, n_images, world)
    get = train.get if isinstance(train, dict) else lambda k, d=None: getattr(train, k, d)
    bs, epochs, warm = get("batch_size"), get("epochs"), get("warmup_steps", 0)
    if warm > total:
        raise ClipoodError(f"train.warmup_steps={warm} is longer than the training ({total} steps: {n_images} "
                           f"images, train.batch_size={bs}, train.epochs={epochs}); lower train.warmup_steps")
    return total


def _seed(cfg: TrainConfig) -> int:
    return 0 if cfg.seed is None else int(cfg.seed)


def _check_finite(loss: torch.Tensor, step: int, epoch: int, ckpt_root: Path) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLoss(f"loss became {float(loss.detach())} at step {step + 1} (epoch {epoch + 1}); training "
                            f"stopped, last good checkpoint: {latest_checkpoint(ckpt_root) or 'none'}. Lower "
                            f"train.lr or the loss weights")


def _start_log(accelerator, out: Path, step: int) -> Path:
    """The JSON-lines training log: new for a fresh run, cut back to ``step`` for a resumed one."""
    path = out / "train_log.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if step == 0:
            path.write_text("")
        else:
            truncate_history(path, step)
        for stale in (out / "checkpoints").glob(".tmp-*"):  # a checkpoint being written when the process was killed
            shutil.rmtree(stale, ignore_errors=True)
    return path


def fit(method, data: CropTrainData, cfg: TrainConfig, accelerator, output_dir: str | os.PathLike, *,
        resume: bool = True, progress: bool = True, signature: dict | None = None,
        desc: str = "train") -> TrainResult:
    """Train ``method`` (an adapter + loss terms) on ``data``; checkpoints go to ``output_dir/checkpoints``.

    With ``resume`` the latest checkpoint there is loaded and training continues where it stopped, producing
    the same final weights as an uninterrupted run (bit-identical on CPU with one process). ``desc`` labels the
    progress bar (recipes: ``train <method>``).
    """
    try:
        return _fit(method, data, cfg, accelerator, output_dir, resume=resume, progress=progress,
                    signature=signature, desc=desc)
    finally:
        finish_pruning()  # checkpoints pruned in the background are gone when fit returns or raises


def _fit(method, data: CropTrainData, cfg: TrainConfig, accelerator, output_dir: str | os.PathLike, *,
         resume: bool, progress: bool, signature: dict | None, desc: str) -> TrainResult:
    import time

    from tqdm.auto import tqdm

    out = Path(output_dir)
    ckpt_root = out / "checkpoints"
    world, rank = accelerator.num_processes, accelerator.process_index
    total = total_steps(data, cfg, world)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise ClipoodError("the adapter has no trainable parameters")
    opt = make_optimizer(cfg, params)
    signature = json.loads(json.dumps(signature if signature is not None else asdict(cfg), default=str))
    state = {"step": 0, "epoch": 0, "batch": 0, "signature": signature}
    result = TrainResult(steps=0)
    if resume and (ck := check_resumable(out, signature)) is not None:
        state = load_checkpoint(ck, method.adapter, opt)
        result.resumed_from = str(ck)
        if accelerator.is_main_process:
            log.info("resuming from %s (step %d)", ck, state["step"])
    scheduler = make_scheduler(cfg, opt, total, start_step=state["step"])
    model, opt = accelerator.prepare(method, opt)
    inner = accelerator.unwrap_model(model)
    history_path = _start_log(accelerator, out, state["step"])
    if result.resumed_from and accelerator.trackers:
        _replay_into_trackers(accelerator, history_path, cfg.log_every)  # the tracker holds the whole run
    t0, before = time.time(), float(state.get("train_seconds", 0.0))  # training time of earlier sessions
    step = state["step"]
    start_step = step
    bar = tqdm(total=total, initial=step, desc=desc, disable=not (progress and accelerator.is_main_process),
               mininterval=1, dynamic_ncols=True)
    stopped = False
    with _StopFlag() as flag:
        for epoch in range(state["epoch"], cfg.epochs):
            batches = data.epoch_batches(epoch, _seed(cfg), cfg.batch_size, world)
            first = state["batch"] if epoch == state["epoch"] else 0
            for bi in range(first, len(batches)):
                if step >= total:
                    break
                per = len(batches[bi]) // world
                batch = data.collate(batches[bi][rank * per:(rank + 1) * per], accelerator.device)
                lr = opt.param_groups[0]["lr"]
                with accelerator.autocast():
                    outd = model(batch)
                _check_finite(outd["loss"], step, epoch, ckpt_root)
                accelerator.backward(outd["loss"])
                if cfg.grad_clip:
                    accelerator.clip_grad_norm_(params, cfg.grad_clip)
                optimizer_step(opt)
                opt.zero_grad(set_to_none=True)
                step += 1
                if step < total:  # the rate of the next step; at the end the optimiser keeps its last rate
                    scheduler.step()
                state.update(step=step, epoch=epoch, batch=bi + 1, train_seconds=before + time.time() - t0)
                logs = {k: float(accelerator.reduce(v.detach().float(), "mean")) for k, v in outd.items()}
                rec = {"step": step, "epoch": epoch + 1, "lr": lr, **logs}
                result.history.append(rec)
                if accelerator.is_main_process:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
                    with open(history_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if cfg.log_every and step % cfg.log_every == 0 and accelerator.trackers:
                        accelerator.log(logs, step=step)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or flag.stop:
                    _ckpt(accelerator, ckpt_root, inner, opt, state, cfg)
                if flag.stop:
                    stopped = True
                    break
            if stopped or step >= total:
                break
            state.update(epoch=epoch + 1, batch=0, train_seconds=before + time.time() - t0)
            _ckpt(accelerator, ckpt_root, inner, opt, state, cfg)
    bar.close()
    if stopped:
        raise KeyboardInterrupt(f"stopped by signal at step {step}; rerun the same command to resume")
    state.update(step=step, train_seconds=before + time.time() - t0)
    _ckpt(accelerator, ckpt_root, inner, opt, state, cfg)
    result.steps = step
    result.trained_now = step - start_step
    result.seconds = state["train_seconds"]  # cumulative over every session of this run (survives a resume)
    result.sessions = _sessions(out, result.resumed_from) + [
        {"steps_trained": result.trained_now, "from_step": start_step, "processes": world,
         "resumed_from": result.resumed_from, "seconds": round(time.time() - t0, 3)}]
    if accelerator.is_main_process:
        from ..io import write_json

        write_json(out / "training.json", {"steps": step, "train_seconds": round(result.seconds, 3),
                                           "this_session_seconds": round(time.time() - t0, 3),
                                           "this_session_steps": result.trained_now,
                                           "resumed_from": result.resumed_from, "sessions": result.sessions,
                                           "torch_threads": torch.get_num_threads()})
    return result


def _sessions(out: Path, resumed_from: str | None) -> list[dict]:
    """The sessions recorded by earlier runs into ``out`` (a fresh start has none)."""
    path = out / "training.json"
    if not resumed_from or not path.is_file():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("sessions")
    except (ValueError, AttributeError):
        return []
    return list(old) if isinstance(old, list) else []


def _replay_into_trackers(accelerator, history_path: Path, log_every: int) -> None:
    """Log the steps of earlier sessions (from ``train_log.jsonl``) to this session's trackers, as they were
    logged then: a tracker added on a resumed run (``log_with=...`` after the main job) is not left empty."""
    if not accelerator.is_main_process or not log_every or not history_path.is_file():
        return
    for line in history_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("step") and rec["step"] % log_every == 0:
            logs = {k: v for k, v in rec.items() if k.endswith("loss") and isinstance(v, (int, float))}
            accelerator.log(logs, step=rec["step"])


def _ckpt(accelerator, ckpt_root, inner, opt, state, cfg: TrainConfig):
    if accelerator.is_main_process:
        save_checkpoint(ckpt_root, inner.adapter, opt, dict(state), cfg.keep_checkpoints, prune_later=True)
    accelerator.wait_for_everyone()
