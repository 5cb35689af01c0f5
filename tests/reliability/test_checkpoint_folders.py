"""Checkpoint folders: a half-written or half-deleted one is never taken for the latest."""
import torch

from clipood.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint


def _save(root, step, value):
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.fill_(value)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(1, 2)).sum().backward()
    opt.step()
    return save_checkpoint(root, lin, opt, {"step": step, "epoch": 0, "batch": step}, keep=3)


def test_incomplete_checkpoint_is_skipped_and_resave_is_atomic(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1, 1.0)
    _save(root, 2, 2.0)
    newest = _save(root, 3, 3.0)
    assert latest_checkpoint(root) == newest
    (newest / "adapter.safetensors").unlink()  # as if killed while deleting it
    assert latest_checkpoint(root).name == "step-000002"
    # re-saving an existing step replaces it whole, and keep=3 prunes the oldest without leftovers
    _save(root, 2, 5.0)
    _save(root, 4, 4.0)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step-000002", "step-000003", "step-000004"], names
    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    state = load_checkpoint(root / "step-000002", lin, opt)
    assert state["step"] == 2
    # value 5.0 minus one AdamW step of lr 0.1 (first Adam step moves each weight by ~lr, plus decay)
    assert torch.allclose(lin.weight, torch.full((1, 2), 5.0 - 0.1 - 0.1 * 0.01 * 5.0), atol=1e-4)
