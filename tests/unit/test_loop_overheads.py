"""The training loop's per-step overheads that issue 24 removed keep the values they had: the foreach optimisers
step as torch's per-parameter loop does, Accelerate's optimiser wrapper is skipped only where it would only call
the torch optimiser, and checkpoints pruned in the background are gone once pruning is finished."""
from __future__ import annotations

import torch
from accelerate import Accelerator

from clipood.config.settings import TrainConfig
from clipood.training import loop
from clipood.training.checkpoints import finish_pruning, save_checkpoint


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_(),
            torch.randn(1, 5, generator=g).requires_grad_()]


def _train(opt, params, steps=25):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


def test_the_loops_optimisers_step_as_torchs_per_parameter_loop():
    for name, ref in (("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, foreach=False)),
                      ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.01,
                                                         nesterov=True, foreach=False))):
        cfg = TrainConfig(optimizer=name, lr=1e-2, weight_decay=0.01, momentum=0.9, nesterov=(name == "sgd"))
        mine, theirs = _params(), _params()
        got = _train(loop.make_optimizer(cfg, mine), mine)
        want = _train(ref(theirs), theirs)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), name


def test_optimizer_step_skips_only_a_wrapper_that_would_only_step(monkeypatch):
    params = _params()
    acc = Accelerator(cpu=True)
    opt = acc.prepare(torch.optim.AdamW(params, lr=1e-2))
    calls = []
    monkeypatch.setattr(type(opt), "step", lambda self, closure=None: calls.append("wrapper"))
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    loop.optimizer_step(opt)
    assert calls == [] and not torch.equal(params[0], before[0])  # the torch optimiser stepped
    opt.scaler = object()  # mixed precision: the wrapper must run (it unscales and may skip the step)
    loop.optimizer_step(opt)
    assert calls == ["wrapper"]
    opt.scaler = None
    opt.gradient_state._set_sync_gradients(False)  # accumulating: the wrapper decides
    loop.optimizer_step(opt)
    assert calls == ["wrapper", "wrapper"]
    opt.gradient_state._set_sync_gradients(True)


def test_background_pruning_keeps_the_newest_and_leaves_no_trash(tmp_path):
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    for step in range(1, 6):
        save_checkpoint(tmp_path, lin, opt, {"step": step}, keep=2, prune_later=True)
    finish_pruning()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000005"]
