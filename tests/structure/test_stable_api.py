"""The names of the README's stable Python API keep working wherever the core's modules live.

Two checks: an explicit list (the README's "Python API (stable)" section and its other Python snippets, with the
parameters it documents), and the README itself: every import of its ``python`` code blocks and every dotted
``clipood.`` / ``adapters.`` name of the stable section must resolve, so a README edit stays covered too.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

#: dotted name → the leading parameters the README writes for it (name, default or inspect.Parameter.empty)
E = inspect.Parameter.empty
STABLE = {
    "clipood.load_clip": [("model_name", E), ("pretrained", None)],
    "clipood.Backbone.encode_images": [("self", E), ("images", E), ("local", False)],
    "clipood.Backbone.encode_text": [("self", E), ("texts", E), ("templates", None)],
    "clipood.Backbone.text_path": None,
    "clipood.Detector.from_pretrained": [("path", E)],
    "clipood.Detector.calibrate": [("self", E), ("id_scores", E), ("id_recall", 0.95)],
    "clipood.Detector.save_pretrained": [("self", E), ("directory", E)],
    "clipood.Detector.__call__": None,
    "clipood.metrics.ood_metrics": [("id_scores", E), ("ood_scores", E), ("convention", "hendrycks")],
    "clipood.scores.neglabel_score": [("logits", E), ("num_id", E), ("groups", 1)],
    "clipood.scores.mcm_score": [("logits_id", E), ("temperature", 1.0)],
    "clipood.scores.energy_score": None,
    "clipood.scores.max_logit_score": None,
    "clipood.scores.glmcm_score": None,
    "clipood.scores.neglabel_log_odds": [("logits", E), ("num_id", E)],
    "clipood.losses.classification_loss": [("logits", E), ("labels", E)],
    "clipood.losses.ood_loss": [("logits", E), ("num_id", E)],
    "clipood.losses.kr_feature_loss": [("base", E), ("tuned", E)],
    "clipood.losses.kr_cos_loss": None,
    "clipood.losses.kr_logit_loss": None,
    "clipood.losses.kr_prob_loss": None,
    "clipood.negatives.mine_negatives": [("encode_text", E), ("id_classnames", E), ("corpus", E)],
    "clipood.suites.list_suites": [],
    "clipood.mini.build.build_world": None,
    "clipood.mini.pretrain": None,
    "clipood.errors.ClipoodError": None,
    "clipood.efficiency.measure.count_flops": None,
    "adapters.NFT": None,
    "adapters.NFT.factors": None,
    "adapters.AdapterContext": None,
    "adapters.list_adapters": [],
    "adapters.build_adapter": [("name", E), ("context", E), ("num_id", None)],
    "adapters.save_adapter": None,
    "adapters.load_adapter": None,
    "adapters.register_adapter": [("name", E), ("config_cls", E), ("adapter_cls", E)],
    "adapters.stack": None,
}


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted``, then follow attributes (``clipood.X`` through the
    package's lazy top-level names)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("dotted", sorted(STABLE))
def test_stable_name_resolves_with_the_documented_parameters(dotted):
    obj = resolve(dotted)
    leading = STABLE[dotted]
    if leading is None:
        return
    params = list(inspect.signature(obj).parameters.values())
    assert [(p.name, p.default) for p in params[: len(leading)]] == leading


def _stable_section() -> str:
    text = README.read_text()
    start = text.index("## Python API (stable)")
    return text[start: text.index("\n## ", start + 1)]


def test_every_import_of_the_readme_python_snippets_resolves():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    names = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names += [f"{node.module}.{a.name}" for a in node.names]
    assert "clipood.metrics.ood_metrics" in names and "adapters" in names
    for name in names:
        resolve(name)


def test_every_dotted_name_of_the_stable_section_resolves():
    found = set(re.findall(r"(?<![\w.])((?:clipood|adapters)(?:\.[A-Za-z_]\w*)+)", _stable_section()))
    assert {"clipood.load_clip", "clipood.negatives.mine_negatives", "clipood.scores"} <= found
    for dotted in sorted(found):
        resolve(dotted)
    assert found <= set(STABLE) | {"clipood.scores", "clipood.metrics", "clipood.losses"}, "list it in STABLE"
