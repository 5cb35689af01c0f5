"""The hooks of the adapter contract are declared with defaults (issue 21): callers call them, never probe for them.

Each hook is exercised through the caller that uses it (``save_adapter`` / ``load_adapter`` for the part-wise
save, ``stack`` for ``init_from_base``, the registry for the ``pre_projection_features`` batch key) with tiny
adapters written here, and an AST walk checks that no library module looks a hook up by name.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters.contract import BATCH_KEYS, Adapter, AdapterConfig, AdapterOutput
from clipood.training.task import PrepareInputs, TrainingTask

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ("task_cls", "trains_stacked", "prepare", "init_from_base", "save_parts", "load_parts", "as_batch",
         "needs_fit", "fit", "cls_columns", "text_feature_scope", "rows_independent")


def _features(k=6, d=8, seed=0):
    return F.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


class Centre(Adapter):
    """Needs a fit: the mean of the ID training features before the projection (a post-hoc statistic)."""

    requires = frozenset({"image_features", "pre_projection_features"})
    needs_fit = True

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.register_buffer("mean", None)

    def fit(self, batches):
        total, count = 0.0, 0
        for b in batches:
            total = total + b["pre_projection_features"].double().sum(0)
            count += b["pre_projection_features"].shape[0]
        self.mean = (total / count).float()

    def forward_batch(self, batch):
        return AdapterOutput(logits=self.image_features(batch) @ self.base_text_features.T)


class Unfitted(Adapter):
    needs_fit = True


@dataclasses.dataclass
class PartsConfig(AdapterConfig):
    pass


class WithParts(Adapter):
    """Saves a frozen tensor next to its weights and reloads it (what a stack does with its base)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.frozen = torch.zeros(3)

    def save_parts(self, directory):
        torch.save(self.frozen, Path(directory) / "frozen.pt")

    def load_parts(self, directory):
        self.frozen = torch.load(Path(directory) / "frozen.pt")

    def forward_batch(self, batch):
        return AdapterOutput(logits=self.image_features(batch) @ self.base_text_features.T + self.w)


class Recorder(WithParts):
    seen: list = []

    def init_from_base(self, base):
        Recorder.seen.append(base)


def test_every_hook_is_declared_with_its_default():
    assert Adapter.task_cls is TrainingTask and TrainingTask.trains_stacked is False
    assert Adapter.needs_fit is False and Adapter.cls_columns == "all"
    assert "pre_projection_features" in BATCH_KEYS
    nft = adapters.build_adapter("nft", _features(), 3)
    assert nft.task_cls is TrainingTask and nft.init_from_base(nft) is None
    assert nft.save_parts(ROOT) is None and nft.load_parts(ROOT) is None   # no part: nothing written or read
    before = {k: v.clone() for k, v in nft.state_dict().items()}
    nft.fit([{"image_features": _features()}])                            # nothing to fit: a no-op
    assert all(torch.equal(before[k], v) for k, v in nft.state_dict().items())
    with nft.text_feature_scope():
        assert nft(_features()[:2]).logits.shape == (2, 6)
    task = TrainingTask(nft, {"cls": 1.0})
    inputs = PrepareInputs(backbone=None, device=torch.device("cpu"), seed=3)
    assert task.prepare(inputs) is None and inputs.world_dir is None and inputs.progress is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.seed = 4
    for name in adapters.list_adapters():
        cls = adapters.get_adapter_class(name)
        for hook in HOOKS[2:]:
            assert hook in ("trains_stacked", "prepare") or hasattr(cls, hook), (name, hook)
        if name != "stacked":  # a stack's task is its tuner's (an instance property)
            assert issubclass(cls.task_cls, TrainingTask), name


def test_the_optional_fit_step_reads_pre_projection_features(clean_registry):
    adapters.register_adapter("centre_test", AdapterConfig, Centre)   # the batch key is one the contract knows
    c = _features()
    a = adapters.build_adapter("centre_test", c, 3)
    h = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    a.fit([{"image_features": c[:4], "pre_projection_features": h[:4]},
           {"image_features": c[:6], "pre_projection_features": h[4:]}])
    by_hand = [sum(float(h[i, j]) for i in range(10)) / 10 for j in range(5)]
    torch.testing.assert_close(a.mean, torch.tensor(by_hand), atol=1e-6, rtol=0)
    with pytest.raises(NotImplementedError, match="needs_fit"):
        Unfitted(c, 3).fit([])


def test_parts_are_saved_and_reloaded_by_the_checkpoint(tmp_path, clean_registry):
    adapters.register_adapter("parts_test", PartsConfig, WithParts)
    a = adapters.build_adapter("parts_test", _features(), 3)
    a.frozen = torch.tensor([1.0, 2.0, 3.0])
    adapters.save_adapter(a, tmp_path / "ckpt", include_base=True)
    again = adapters.load_adapter(tmp_path / "ckpt")
    assert torch.equal(again.frozen, torch.tensor([1.0, 2.0, 3.0]))


def test_stacking_calls_init_from_base_with_the_trained_base(clean_registry):
    adapters.register_adapter("recorder_test", PartsConfig, Recorder)
    base = adapters.build_adapter("ft", _features(), 3)
    Recorder.seen.clear()
    stacked = adapters.stack(base, tuner="recorder_test")
    assert Recorder.seen == [stacked.base] and stacked.base is base
    assert stacked.task_cls is TrainingTask  # Recorder's task does not train through a stack


def _hook_probes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in HOOKS):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}(…, {node.args[1].value!r})")
    return found


# the core is duck-typed (it never imports adapters): it reads these two declared hooks with a default
CORE_DEFAULTS = {("clipood/training/task.py", "cls_columns"), ("clipood/training/task.py", "text_feature_scope"),
                 ("clipood/training/task.py", "rows_independent")}


def test_no_library_module_probes_for_a_hook():
    found = []
    for package in ("adapters", "clipood", "clipood_recipes"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found += [f for f in _hook_probes(path)
                      if (str(path.relative_to(ROOT)), f.rsplit("'", 2)[-2]) not in CORE_DEFAULTS]
    assert not found, "hooks are declared on the contract; call them instead of probing: " + "; ".join(found)
