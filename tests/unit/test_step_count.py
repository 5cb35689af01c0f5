"""One step count: ``check_schedule`` (before any crop), ``total_steps`` (the loop) and the batches an epoch
really yields agree, for every small case, with a count written out by hand."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from clipood.errors import ClipoodError


def _data(n: int):
    from clipood.training.loop import CropTrainData

    img = torch.arange(n)
    return CropTrainData(SimpleNamespace(image_labels=torch.zeros(n, dtype=torch.long), id_image=img, neg_image=img))


def by_hand(n: int, bs: int, world: int, epochs: int, max_steps: int) -> int:
    """Full batches, plus the short last one when its images split evenly over the processes; × epochs; cut."""
    per_epoch = n // bs + (1 if n % bs and (n % bs) % world == 0 else 0)
    return min(per_epoch * epochs, max_steps) if max_steps else per_epoch * epochs


CASES = [(n, bs, world, epochs, max_steps)
         for n, bs, world, epochs, max_steps in itertools.product(range(1, 12), range(1, 7), (1, 2, 4), (1, 3), (0, 4))
         if bs % world == 0 and bs <= n]


def test_the_counts_agree_with_a_hand_count_and_with_the_batches_an_epoch_yields():
    from clipood.config.settings import TrainConfig
    from clipood.training.loop import check_schedule, total_steps

    assert len(CASES) > 150
    for n, bs, world, epochs, max_steps in CASES:
        want = by_hand(n, bs, world, epochs, max_steps)
        cfg = TrainConfig(batch_size=bs, epochs=epochs, max_steps=max_steps)
        data = _data(n)
        seen = sum(len(data.epoch_batches(e, 0, bs, world)) for e in range(epochs))  # what the loop iterates
        got = (check_schedule(cfg, n, world), check_schedule({"batch_size": bs, "epochs": epochs,
                                                               "max_steps": max_steps}, n, world),
               total_steps(data, cfg, world), min(seen, max_steps) if max_steps else seen)
        assert got == (want,) * 4, (n, bs, world, epochs, max_steps, got)


def test_the_batch_size_is_refused_the_same_way_before_the_crops_and_in_the_loop():
    """A batch that cannot split over the processes is refused by the up-front check too (it used to count
    on and fail only in the loop)."""
    from clipood.config.settings import TrainConfig
    from clipood.training.loop import check_schedule, total_steps

    cfg = TrainConfig(batch_size=3, epochs=1)
    msgs = []
    for count in (lambda: check_schedule(cfg, 10, 2), lambda: total_steps(_data(10), cfg, 2)):
        with pytest.raises(ClipoodError, match=r"train\.batch_size=3 must be divisible by the number of processes "
                                               r"\(2\)") as e:
            count()
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    with pytest.raises(ClipoodError, match="larger than the 4 training images"):
        check_schedule(TrainConfig(batch_size=6, epochs=1), 4, 2)


def test_a_fit_takes_the_counted_steps(tmp_path):
    """The loop runs exactly the count: 7 images, batch 2, 2 processes' rule not involved (1 process), 3
    epochs: (3 full + 1 short) × 3 = 12 optimiser steps, by hand."""
    from accelerate import Accelerator

    from clipood.config.settings import TrainConfig
    from clipood.training.loop import check_schedule, fit

    class Task(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.adapter = torch.nn.Linear(1, 1)
            self.steps = 0

        def forward(self, batch):
            self.steps += 1
            return {"loss": self.adapter(torch.ones(1, 1)).sum()}

    n, cfg = 7, TrainConfig(batch_size=2, epochs=3, log_every=1)
    data = _data(n)
    data.collate = lambda positions, device: {"n": torch.tensor(len(positions))}
    task = Task()
    result = fit(task, data, cfg, Accelerator(cpu=True), tmp_path, resume=False, progress=False)
    assert check_schedule(cfg, n) == 12 == result.steps == task.steps
