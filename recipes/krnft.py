"""KR-NFT: Knowledge Regularized Negative Feature Tuning (ACM MM 2025) — train and evaluate.

    accelerate launch recipes/krnft.py                                # mini world (offline default), ~2 min
    accelerate launch recipes/krnft.py losses.kr=10 output_dir=outputs/krnft-l10
    accelerate launch recipes/krnft.py --config recipes/configs/krnft_imagenet.yaml data_root=/data
    accelerate launch --multi_gpu --num_processes 2 recipes/krnft.py cpu=true   # 2 CPU processes

Pipeline: mine NegLabel negatives → encode evaluation images once (cached) → k-shot training images →
P random crops each, ranked by similarity to "a photo of a <class>" → Q ID + Q negative crops encoded once
(cached) → train the adapter with L = L_cls + λ1·L_ood + λ2·L_kr (Eq. 10) → evaluate zero-shot NegLabel and
KR-NFT on Base / unseen classes / unseen styles → results.json, results.md, plots, adapter checkpoint.

Presets (``preset=NAME``): ``mini`` (default), ``paper`` (P 256, Q 32, λ1 0.3, λ2 100, M 10,000, colour
jitter + grayscale, AdamW 1e-5, 3 epochs) and ``official`` (the released code: P 128, no jitter, λ2 10,
M 10,500, h 64, weight decay 0.01, grouped L_cls). Any key can be overridden as key=value.
"""
from clipood.pipeline import COMMON_DEFAULTS, TRAIN_DEFAULTS
from clipood.recipe import run

DEFAULTS = {**COMMON_DEFAULTS, **TRAIN_DEFAULTS, "output_dir": "outputs/krnft", "preset": "mini"}

def _merged(base: dict, over: dict) -> dict:
    import copy

    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


PRESETS = {
    # the embedded mini world: 10 Base classes × 4 shots, 32 crops per image, a few seconds per epoch
    # λ2 = 1000 here: with D = 128 and K = 50 labels the KR term is ~10× smaller than on ImageNet (a sweep on
    # three worlds: λ2 100 helps Base but hurts unseen classes; 1000 improves Base, New and styles)
    "mini": {
        "adapter": {"name": "nft", "options": {"hidden_dim": 32}},
        "losses": {"cls": 1.0, "ood": 0.3, "kr": 1000.0},
        "train": {"epochs": 30, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine"},
    },
    # the paper's §4.1 setting (ImageNet-1k, ViT-B/16; NegLabel's prompts are the default off the mini world)
    "paper": {
        "model": "ViT-B-16", "pretrained": "openai", "benchmark": "imagenet", "shots": 4,
        "new_class_suites": ["cifar10", "cifar100", "cub", "stanford_cars", "food101", "oxford_pets"],
        "new_style_suites": ["imagenet-sketch", "imagenet-a", "imagenet-r", "imagenet-v2"],
        "negatives": {"num": 10000},
        "crops": {"num_crops": 256, "num_selected": 32, "color_jitter": True, "grayscale": True},
        "adapter": {"name": "nft", "options": {"hidden_dim": 64}},
        "losses": {"cls": 1.0, "ood": 0.3, "kr": 100.0},
        "train": {"epochs": 3, "batch_size": 1, "lr": 1e-5, "weight_decay": 0.01, "schedule": "constant"},
    },
}
# what the released code does (methods.md): P 128, no jitter, λ2 10, M 10,500, grouped L_cls, meta-nets
# conditioned on the top crop, and "epochs" of len(loader)/10 = 400 steps (3 × 400 = 1,200 steps)
PRESETS["official"] = _merged(PRESETS["paper"], {
    "negatives": {"num": 10500},
    "crops": {"num_crops": 128, "color_jitter": False, "grayscale": False},
    "losses": {"kr": 10.0},
    "cls_groups": 10,
    "train": {"condition": "top_crop", "max_steps": 1200},
})


def main(argv):
    from clipood.pipeline import check_config, check_resume, start_run, train_and_evaluate, write_outputs
    from clipood.recipe import config_from_argv
    from clipood.report import summary_table

    cfg = config_from_argv(DEFAULTS, argv, PRESETS)
    cfg["eval"]["mcm"] = False
    check_config(cfg)
    check_resume(cfg)
    acc, bench, sfs, rows, raw = start_run(cfg)
    trained = train_and_evaluate(cfg, bench, sfs, acc, cfg["output_dir"])
    rows += trained["rows"]
    for split, by_method in trained["raw"].items():
        raw[split].update(by_method)
    if acc.is_main_process:
        from clipood.io import write_json

        write_json(f"{cfg['output_dir']}/config.json", cfg)
        r = trained["result"]
        notes = bench.notes + [f"{cfg['method_name']}: {r.steps} steps in {r.seconds:.1f}s"
                               + (f" (resumed from {r.resumed_from})" if r.resumed_from else ""),
                               f"processes: {acc.num_processes}"]
        md = write_outputs(rows, raw, cfg["output_dir"], f"{cfg['method_name']} vs zero-shot NegLabel", notes,
                           plots=cfg["eval"]["plots"])
        print("\n".join(notes))
        print(summary_table(rows))
        print(f"wrote {md}, results.json, plots and the adapter checkpoint in {cfg['output_dir']}")


if __name__ == "__main__":
    run(main)
