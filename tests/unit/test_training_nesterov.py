"""``train.nesterov``: SGD with Nesterov momentum (LAPT's optimiser), against the update written out by hand."""
from __future__ import annotations

import pytest
import torch

from clipood.errors import ClipoodError
from training_probe import LinearLoss, fit_recording, train_settings

W0 = {"w": torch.tensor([1.0, -2.0, 0.5])}
GRADS = [{"w": torch.tensor([1.0, 2.0, -4.0])}, {"w": torch.tensor([-0.5, 1.0, 3.0])},
         {"w": torch.tensor([2.0, -1.0, 0.25])}]


def test_sgd_nesterov_update_by_hand(tmp_path):
    """torch.optim.SGD with nesterov (dampening 0): d_t = g_t + λ w_t; b_1 = d_1, b_t = μ b_{t−1} + d_t;
    w_{t+1} = w_t − lr·(d_t + μ b_t). Three steps, μ = 0.9, λ = 1e-5, lr = 0.01 (LAPT's values), constant."""
    mu, wd, lr = 0.9, 1e-5, 0.01
    _, weights, groups = fit_recording(
        LinearLoss(W0, GRADS),
        train_settings(optimizer="sgd", momentum=mu, nesterov=True, weight_decay=wd, lr=lr, schedule="constant",
                       epochs=1, batch_size=2, max_steps=3), tmp_path)
    w, buf = W0["w"].double().clone(), None
    for t, g in enumerate(GRADS):
        assert weights[t]["w"].tolist() == pytest.approx(w.tolist(), rel=1e-12), f"before step {t}"
        d = g["w"].double() + wd * w
        buf = d if buf is None else mu * buf + d
        w = w - lr * (d + mu * buf)
    assert weights[3]["w"].tolist() == pytest.approx(w.tolist(), rel=1e-12)
    # and it is not plain momentum: the heavy-ball update differs after the first step
    hb = W0["w"].double() - lr * (GRADS[0]["w"].double() + wd * W0["w"].double())
    assert weights[1]["w"].tolist() != pytest.approx(hb.tolist(), rel=1e-6)
    (group,) = groups
    assert group["nesterov"] is True and group["momentum"] == mu and group["dampening"] == 0


@pytest.mark.parametrize("train", [{"optimizer": "adamw", "nesterov": True},
                                   {"optimizer": "sgd", "momentum": 0.0, "nesterov": True}])
def test_nesterov_without_sgd_momentum_is_refused(train):
    with pytest.raises(ClipoodError, match="train.nesterov"):
        train_settings(**train)


def test_lapt_imagenet_preset_is_sgd_nesterov():
    from clipood_recipes.configure import compose_settings
    from clipood_recipes.settings import TrainRunSettings
    from helpers import ROOT

    cfg = compose_settings(TrainRunSettings, ["preset=lapt_imagenet"], configs_dir=ROOT / "recipes" / "configs",
                           recipe="krnft")
    t = cfg["train"]
    assert (t["optimizer"], t["momentum"], t["nesterov"], t["lr"], t["weight_decay"], t["schedule"], t["epochs"],
            t["batch_size"]) == ("sgd", 0.9, True, 0.01, 1e-5, "cosine", 10, 32)
    o = cfg["adapter"]["options"]  # the released train.sh: wccm mixing only, 1,000 training negatives
    assert (o["mix_rule"], o["cross_dist_weight"], o["train_negatives"]) == ("release", 0.0, 1000)
    assert (cfg["negatives"]["num"], cfg["eval"]["groups"], cfg["eval"]["group_remainder"]) == (10000, 100, "drop")
