"""The documented prompt-method template (docs/prompt_template.py) is a working method built only on declared hooks.

In process: dropped into the package as is, it is discovered, starts at CoOp's prompts ("a photo of a <name>."
through open_clip's own ``encode_text``), its own loss term equals a hand computation, it trains, reloads and
moves to other labels. Through the recipe: the file (as a plugin module with a ``clipood.adapters`` entry point)
and one YAML in a temporary folder train 2 steps and evaluate.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import adapters
from helpers import ROOT, open_clip_features, unit

TEMPLATE = ROOT / "docs" / "prompt_template.py"
ID_NAMES, NEG_NAMES = ["cat", "dog", "tree"], ["river", "cloud"]


@pytest.fixture(scope="module")
def tiny():
    from clipood.clip.backbone import load_clip

    torch.manual_seed(2025)
    return load_clip("clipood-tiny")


def test_prompt_template_is_a_working_prompt_method(tmp_path, monkeypatch, clean_registry, tiny):
    (tmp_path / "my_prompt.py").write_text(TEMPLATE.read_text(encoding="utf-8"))
    monkeypatch.setattr(adapters, "__path__", [*adapters.__path__, str(tmp_path)])
    assert "my_prompt" in adapters.discover_adapters(refresh=True)
    ctx = adapters.AdapterContext.from_backbone(tiny, ID_NAMES, NEG_NAMES)
    a = adapters.build_adapter("my_prompt", ctx, spread_weight=0.5)
    assert isinstance(a, adapters.PromptLearner) and a.n_ctx == 4 and a.uses_text_encoder
    want = open_clip_features(tiny, [f"a photo of a {n}." for n in ID_NAMES])
    torch.testing.assert_close(a.id_text_features(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.tuned_text_features()[3:], ctx.text_features[3:] / ctx.text_features[3:].norm(
        dim=-1, keepdim=True), atol=1e-6, rtol=0)

    task = a.task_cls(a, {"cls": 1.0}, logit_scale=100.0)
    batch = {"id_features": unit(4, a.dim, seed=1), "id_labels": torch.tensor([0, 1, 2, 0])}
    out = task(batch)
    t = want.double()
    pairs = [float(t[i] @ t[j]) for i in range(3) for j in range(3) if i != j]
    assert float(out["spread_loss"]) == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)   # L_spread by hand
    assert float(out["loss"].detach()) == pytest.approx(float(out["cls_loss"]) + 0.5 * float(out["spread_loss"]), abs=1e-5)

    before = a.ctx.detach().clone()
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float((a.ctx.detach() - before).abs().max()) > 0
    a.eval()
    v = unit(2, a.dim, seed=3)
    adapters.save_adapter(a, tmp_path / "ckpt")
    again = adapters.load_adapter(tmp_path / "ckpt", backbone=tiny)
    torch.testing.assert_close(again(v).logits, a(v).logits, atol=1e-6, rtol=0)
    other = adapters.AdapterContext.from_backbone(tiny, ["boat", "car"], ["sand"])
    moved = a.for_labels(other)
    assert torch.equal(moved.ctx, a.ctx) and moved.id_bank.num_rows == 2   # the shared context re-encodes


def test_prompt_template_trains_through_the_recipe(tmp_path):
    """One file + one YAML: the template as a plugin module (entry point ``clipood.adapters``) trains 2 steps
    with its own task (its ``spread`` term is logged) and is evaluated on every split."""
    from clipood.mini.build import MiniWorldConfig, build_world
    from test_recipes import SMALL, _check_trained_and_evaluated
    from helpers import run_script

    (tmp_path / "clipood_my_prompt.py").write_text(TEMPLATE.read_text(encoding="utf-8"))
    info = tmp_path / "clipood_my_prompt-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clipood-my-prompt\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clipood.adapters]\nmy_prompt = clipood_my_prompt\n")
    run_yaml = tmp_path / "my_prompt.yaml"
    run_yaml.write_text("preset: mini\nmethod_name: MyPrompt\n"
                        "adapter: {name: my_prompt, options: {spread_weight: 0.5}}\n")
    build_world(MiniWorldConfig(seed=0, train_per_class=4, test_per_class=6, ood_per_set=12, style_per_class=4),
                root=tmp_path / "worlds", progress=False)
    out = tmp_path / "out"
    r = run_script(["recipes/krnft.py", *SMALL, f"mini.root={tmp_path / 'worlds'}", f"cache_dir={tmp_path / 'cache'}",
                    f"output_dir={out}", "--config", str(run_yaml)],
                   env_extra={"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows, saved = _check_trained_and_evaluated(out, "MyPrompt")
    assert saved["adapter"] == "my_prompt" and saved["config"]["spread_weight"] == 0.5
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("spread_loss" in entry for entry in log), log[0]
    assert Path(out / "adapter" / "adapter.safetensors").is_file()
