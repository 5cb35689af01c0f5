"""Pretrain the tiny CLIP of the mini world contrastively (deterministic for a fixed ``--threads``).

    python -m clipood.mini.pretrain --out clipood/mini/weights   # the shipped weights: 12,000 steps, 2 threads

(``--stop-after N`` saves the step-N weights of the same schedule; ``--snapshot-dir`` keeps every evaluation's).

It sees *all* shapes, digits, colours, patterns and styles (as real CLIP saw the web): 10 % textures, 2 % noise,
4 % clutter, 6 % rows / pairs, 10 % digits and 68 % shape scenes (a main shape and 0–2 small extras; captions
name the extras only sometimes); the benchmark builder later
decides which shapes are ID, unseen or OOD. Images are rendered at 64 px and resized to the model's 32 px
with the same bicubic resize that the model's preprocessing uses. Writes ``clipood-mini.safetensors`` (fp16)
and ``pretrain_log.json`` (loss curve and periodic zero-shot accuracy) into ``--out``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .shapes import DIGIT_NAMES, SHAPE_NAMES
from .world import STYLES, caption, render, sample_scene

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def _scene_for(i: int, seed: int):
    rng = np.random.default_rng([seed, i])
    u = rng.random()
    style = str(rng.choice(STYLES, p=[0.4, 0.2, 0.2, 0.2]))
    if u < 0.10:
        return sample_scene(rng, kind="texture")
    if u < 0.12:
        return sample_scene(rng, kind="noise")
    if u < 0.16:
        return sample_scene(rng, kind="clutter", shapes=SHAPE_NAMES + DIGIT_NAMES)
    if u < 0.22:
        return sample_scene(rng, kind=str(rng.choice(["row", "pair"])), shapes=SHAPE_NAMES, style=style)
    if u < 0.32:
        return sample_scene(rng, shape=str(rng.choice(DIGIT_NAMES)), style=style)
    return sample_scene(rng, shape=str(rng.choice(SHAPE_NAMES)), style=style)


def render_pool(n: int, seed: int, render_size: int = 64, image_size: int = 32, progress: bool = True):
    """Render ``n`` scenes → (uint8 N×H×W×3 array, list of scenes)."""
    from tqdm import tqdm

    imgs = np.zeros((n, image_size, image_size, 3), np.uint8)
    scenes = []
    for i in tqdm(range(n), desc="render pool", disable=not progress, mininterval=5):
        scene = _scene_for(i, seed)
        arr = render(scene, render_size)
        imgs[i] = np.asarray(Image.fromarray(arr).resize((image_size, image_size), Image.BICUBIC))
        scenes.append(scene)
    return imgs, scenes


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, imgs, labels, classnames, template="a photo of a {}.") -> float:
    model.eval()
    t = model.encode_text(tokenizer([template.format(c) for c in classnames]))
    t = t / t.norm(dim=-1, keepdim=True)
    correct = 0
    for s in range(0, len(imgs), 256):
        f = model.encode_image(to_tensor(imgs[s:s + 256]))
        f = f / f.norm(dim=-1, keepdim=True)
        correct += int(((f @ t.T).argmax(1) == torch.as_tensor(labels[s:s + 256])).sum())
    model.train()
    return correct / len(imgs)


def _save(model, path: Path, seed: int) -> None:
    from ..io import save_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_safetensors(state, path, metadata={"format": "pt", "seed": str(seed)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="clipood/mini/weights")
    p.add_argument("--steps", type=int, default=12_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pool", type=int, default=150_000, help="number of pre-rendered training images")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2, help="torch threads (results are reproducible for a fixed value)")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--snapshot-dir", default=None, help="also save the weights at every evaluation here")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps of the --steps schedule (the learning rate has not decayed "
                        "to zero yet) and save those weights (default: run the whole schedule)")
    p.add_argument("--init", default=None,
                   help="start from these clipood-mini weights (a second, annealing stage with a fresh optimiser)")
    args = p.parse_args(argv)

    import open_clip

    from ..clip.backbone import register_model_configs

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    register_model_configs()
    model = open_clip.create_model("clipood-mini", pretrained=None)
    if args.init:
        from ..io import load_safetensors

        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in load_safetensors(args.init).items()})
    tokenizer = open_clip.get_tokenizer("clipood-mini")
    loss_fn = open_clip.ClipLoss()

    t0 = time.time()
    imgs, scenes = render_pool(args.pool, args.seed)
    print(f"rendered {len(imgs)} images in {time.time() - t0:.0f}s", flush=True)
    # held-out probe sets: every shape, photo and sketch style
    probe = {}
    for style in ("photo", "sketch"):
        rng = np.random.default_rng([args.seed + 1, STYLES.index(style)])
        sc = [sample_scene(rng, shape=s, style=style) for s in SHAPE_NAMES for _ in range(8)]
        arr = np.stack([np.asarray(Image.fromarray(render(x, 64)).resize((32, 32), Image.BICUBIC)) for x in sc])
        probe[style] = (arr, [SHAPE_NAMES.index(x.objects[0]["shape"]) for x in sc])

    decay, no_decay = [], []
    for n_, p_ in model.named_parameters():
        (no_decay if p_.ndim < 2 or "logit_scale" in n_ or "bn" in n_ else decay).append(p_)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        q = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * q))

    gen = np.random.default_rng(args.seed + 7)
    log = {"args": vars(args), "loss": [], "eval": []}
    model.train()
    t0 = time.time()
    last = args.steps if args.stop_after is None else max(1, min(args.steps, args.stop_after))
    for step in range(last):
        idx = gen.choice(len(imgs), size=args.batch_size, replace=False)
        texts = [caption(scenes[i], gen) for i in idx]
        x = to_tensor(imgs[idx])
        if gen.random() < 0.5:
            x = x.flip(3)  # shapes are mostly symmetric; flips add variety without changing captions
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        img_f, txt_f, scale = model(x, tokenizer(texts))
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        log["loss"].append(round(float(loss.detach()), 4))
        if (step + 1) % 50 == 0:
            el = time.time() - t0
            print(f"step {step + 1}/{args.steps} loss {np.mean(log['loss'][-50:]):.3f} "
                  f"scale {float(scale):.1f} {el / (step + 1):.2f}s/step", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == last:
            accs = {s: zero_shot_accuracy(model, tokenizer, a, l, SHAPE_NAMES) for s, (a, l) in probe.items()}
            print(f"step {step + 1}: zero-shot {len(SHAPE_NAMES)}-way accuracy {accs}", flush=True)
            log["eval"].append({"step": step + 1, **accs, "minutes": round((time.time() - t0) / 60, 1)})
            if args.snapshot_dir:
                _save(model, Path(args.snapshot_dir) / f"step{step + 1:05d}.safetensors", args.seed)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ..io import write_json

    _save(model, out / "clipood-mini.safetensors", args.seed)
    log["minutes"] = round((time.time() - t0) / 60, 1)
    write_json(out / "pretrain_log.json", log)
    print(f"saved {out / 'clipood-mini.safetensors'} after {log['minutes']} min", flush=True)


if __name__ == "__main__":
    main()
