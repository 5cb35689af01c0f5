"""Adapter discovery without a central list: the package scan and the ``clipood.adapters`` entry-point group.

A third-party adapter is one module (written to a temporary folder here) plus an entry point in an installed
distribution's metadata (a ``*.dist-info`` folder on sys.path, which is what ``pip install`` writes)."""
from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters import registry
from clipood.errors import ClipoodError
from clipood.training.task import TrainingTask

PLUGIN = textwrap.dedent('''
    """A third-party feature adapter: c'_i = L2(c_i + s), one learnable shift s shared by all rows."""
    from dataclasses import dataclass, field

    import torch
    import torch.nn.functional as F

    from adapters.base import Adapter, AdapterConfig, AdapterOutput, check_float, register_adapter


    @dataclass
    class ShiftConfig(AdapterConfig):
        init: float = field(default=0.0, metadata={"help": "initial shift"})

        def __post_init__(self):
            check_float("init", self.init)


    class Shift(Adapter):
        config_cls = ShiftConfig

        def __init__(self, context, num_id=None, config=None, **overrides):
            super().__init__(context, num_id, config, **overrides)
            self.shift = torch.nn.Parameter(torch.full((1, self.dim), float(self.config.init)))

        def forward_batch(self, batch):
            v = self.image_features(batch)
            c = self.base_text_features
            tuned = F.normalize(c + self.shift, dim=-1)
            return AdapterOutput(logits=v @ tuned.T, base_cos=(c * tuned).sum(-1))
    {register}
''')


def install_plugin(tmp_path, monkeypatch, *, register: bool, value: str, module: str = "clipood_shift_plugin"):
    """Write the module and a dist-info with the entry point, and put the folder on sys.path."""
    line = 'register_adapter("shift", ShiftConfig, Shift)' if register else ""
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("{register}", line))
    info = tmp_path / "clipood_shift_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clipood-shift-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[clipood.adapters]\nshift = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def two_steps(adapter) -> list[float]:
    g = torch.Generator().manual_seed(0)
    batch = {"id_features": F.normalize(torch.randn(6, adapter.dim, generator=g), dim=-1),
             "id_labels": torch.tensor([0, 1, 2, 0, 1, 2]),
             "neg_features": F.normalize(torch.randn(6, adapter.dim, generator=g), dim=-1)}
    task = TrainingTask(adapter, {"cls": 1.0, "ood": 0.3, "kr": 10.0})
    opt = torch.optim.AdamW(task.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


@pytest.mark.parametrize("register, value", [(True, "clipood_shift_plugin"),
                                             (False, "clipood_shift_plugin:Shift")],
                         ids=["module-registers", "entry-point-names-the-class"])
def test_entry_point_adapter_is_discovered_and_trains(tmp_path, monkeypatch, clean_registry, register, value):
    install_plugin(tmp_path, monkeypatch, register=register, value=value)
    assert "shift" not in adapters.list_adapters()  # discovered once already, before the plugin existed
    assert "shift" in adapters.discover_adapters(refresh=True)
    c = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    adapter = adapters.build_adapter("shift", c, 3, init=0.0)
    assert adapters.get_adapter_class("shift").name == "shift"
    torch.testing.assert_close(adapter(c[:2]).logits, c[:2] @ c.T)  # zero shift: the zero-shot cosines
    losses = two_steps(adapter)
    assert all(torch.isfinite(torch.tensor(losses))) and float(adapter.shift.detach().abs().sum()) > 0
    adapters.save_adapter(adapter, tmp_path / "ckpt", include_base=True)
    assert torch.equal(adapters.load_adapter(tmp_path / "ckpt")(c[:2]).logits, adapter(c[:2]).logits)


def test_broken_plugin_is_named_with_the_fix(tmp_path, monkeypatch, clean_registry):
    install_plugin(tmp_path, monkeypatch, register=True, value="clipood_missing_module_xyz")
    with pytest.raises(ClipoodError) as e:
        adapters.discover_adapters(refresh=True)
    msg = str(e.value)
    assert "'shift'" in msg and "clipood_missing_module_xyz" in msg and "clipood.adapters" in msg
    assert "uninstall" in msg and "\n" not in msg


def test_package_scan_imports_every_method_module(tmp_path, monkeypatch, clean_registry):
    """A new file in the package registers itself with no edit elsewhere (the scan walks adapters.__path__)."""
    (tmp_path / "shift_scanned.py").write_text(
        PLUGIN.replace("{register}", 'register_adapter("shift_scanned", ShiftConfig, Shift)'))
    monkeypatch.setattr(adapters, "__path__", [*adapters.__path__, str(tmp_path)])
    assert "shift_scanned" in adapters.discover_adapters(refresh=True)
    assert {"coop", "ft", "coft", "nft", "taskres"} <= set(adapters.list_adapters())


def test_documented_template_is_a_working_adapter(tmp_path, monkeypatch, clean_registry):
    """docs/adapter_template.py dropped into the package as is: discovered, zero-shot at init, trains, reloads."""
    from pathlib import Path

    template = Path(__file__).resolve().parents[2] / "docs" / "adapter_template.py"
    (tmp_path / "my_adapter.py").write_text(template.read_text(encoding="utf-8"))
    monkeypatch.setattr(adapters, "__path__", [*adapters.__path__, str(tmp_path)])
    assert "my_adapter" in adapters.discover_adapters(refresh=True)
    c = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    ctx = adapters.AdapterContext(c, id_names=["a", "b", "c"], neg_names=["x", "y", "z"])
    adapter = adapters.build_adapter("my_adapter", ctx, scale=0.5)
    v = c[:3]
    torch.testing.assert_close(adapter(v).logits, v @ c.T, atol=1e-6, rtol=0)
    two_steps(adapter)
    assert float(adapter.weight.detach().abs().sum()) > 0
    adapters.save_adapter(adapter, tmp_path / "ckpt")
    again = adapters.load_adapter(tmp_path / "ckpt", context=ctx)
    assert torch.equal(again(v).logits, adapter(v).logits)
    moved = adapter.for_labels(adapters.AdapterContext(c[:4], id_names=["p", "q"], neg_names=["x", "y"]))
    assert torch.equal(moved.weight, adapter.weight)


def test_failed_discovery_is_reported_again(tmp_path, monkeypatch, clean_registry):
    install_plugin(tmp_path, monkeypatch, register=True, value="clipood_missing_module_xyz")
    for _ in range(2):  # not only once: the registry must never look complete after a failure
        with pytest.raises(ClipoodError, match="clipood_missing_module_xyz"):
            adapters.discover_adapters(refresh=True) if _ == 0 else adapters.list_adapters()
    monkeypatch.undo()
    registry.discover_adapters(refresh=True)


def test_requires_must_name_batch_keys(clean_registry):
    from adapters.base import Adapter, AdapterConfig, register_adapter

    class Typo(Adapter):
        requires = frozenset({"image_features", "local_feature"})

    with pytest.raises(ClipoodError, match=r"\['local_feature'\].*local_features"):
        register_adapter("typo", AdapterConfig, Typo)
