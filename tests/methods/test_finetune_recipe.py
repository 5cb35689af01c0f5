"""The fine-tuned-encoder recipe's pieces: two CE steps through Accelerate on cached trunk outputs of clipood-tiny
equal a hand computation (step 1) and a hand-rolled AdamW step (step 2) and leave the backbone untouched; the
post-hoc rows (MSP, KNN) on fine-tuned features equal hand computations; unsupported scores fail in one line."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from clipood.clip.backbone import load_clip
from clipood.errors import ClipoodError
from clipood.evaluation.protocol import score_cosines
from clipood.training.finetune import FinetunedClassifier, split_image_tower, trunk_features
from clipood_recipes.finetune import check_scores, posthoc_methods, train_head


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip("clipood-tiny")


def _hand_ce(logits, labels):
    return sum(-float(logits[i, labels[i]]) + math.log(sum(math.exp(float(x)) for x in logits[i]))
               for i in range(len(labels))) / len(labels)


def test_two_steps_match_a_hand_computation(tiny):
    from accelerate import Accelerator

    split = split_image_tower(tiny, 1)
    g = torch.Generator().manual_seed(4)
    h = trunk_features(split, torch.randn(6, 3, tiny.image_size, tiny.image_size, generator=g))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    text = F.normalize(torch.randn(3, tiny.embed_dim, generator=g), dim=-1)
    model = FinetunedClassifier(split.head, text, logit_scale=10.0)
    ref = copy.deepcopy(model)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    log = train_head(Accelerator(cpu=True), model, h, y, steps=2, batch_size=4, lr=1e-3, weight_decay=0.01, seed=9)
    gen = torch.Generator().manual_seed(9)
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    for step in range(2):
        idx = torch.randperm(6, generator=gen)[:4]
        ref.train()
        logits = ref(h[idx])
        assert log[step]["total"] == pytest.approx(_hand_ce(logits.detach().double(), y[idx]), abs=1e-5)
        opt.zero_grad()
        F.cross_entropy(logits, y[idx]).backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())  # the trunk is frozen


def test_posthoc_rows_are_the_hand_computed_scores():
    g = torch.Generator().manual_seed(2)
    w = F.normalize(torch.randn(3, 5, generator=g), dim=-1)
    train_z = F.normalize(torch.randn(12, 5, generator=g), dim=-1)
    train_y = torch.arange(12) % 3
    z = F.normalize(torch.randn(4, 5, generator=g), dim=-1)
    methods, fitted = posthoc_methods(["msp", "knn"], train_z, train_y, w, 100.0, knn_k=3)
    assert fitted == {"knn"} and methods["msp"].name == "MSP (fine-tuned)"
    sf = type("SF", (), {"text_features": w, "num_id": 3})()
    got = {n: score_cosines(m.logits_fn({"image_features": z}, sf), 3, m.score, 100.0)[0] for n, m in methods.items()}
    logits = 100.0 * z @ w.T
    msp = torch.tensor([max(math.exp(float(x)) for x in row) / sum(math.exp(float(x)) for x in row) for row in logits])
    knn = torch.tensor([-sorted(float((z[i] - t).norm()) ** 2 for t in train_z)[2] for i in range(4)])  # −k-th, squared
    assert torch.allclose(got["msp"].float(), msp, atol=1e-5)
    assert torch.allclose(got["knn"].float(), knn, atol=1e-5)


def test_unsupported_scores_fail_in_one_line():
    with pytest.raises(ClipoodError, match="pre-projection") as e:
        check_scores(["msp", "react"])
    assert "\n" not in str(e.value)
    with pytest.raises(ClipoodError, match="msp"):
        check_scores(["mspp"])
    assert check_scores(["ebo", "mahalanobis"]) == ["energy", "mds"]  # OpenOOD's aliases
