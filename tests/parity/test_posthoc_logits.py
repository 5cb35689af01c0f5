"""Parity of the logit scores with formulas written from OpenOOD v1.5's postprocessors (numpy float64).

OpenOOD files: ``openood/postprocessors/base_postprocessor.py`` (MSP), ``maxlogit_postprocessor.py``,
``ebo_postprocessor.py``, ``gen_postprocessor.py``; EOE from its release (``Aboriginer/EOE``,
``utils/detection_util.py``, ``score_ablation == 'EOE'``).
"""
import numpy as np
import pytest
import torch
from parity_check import check
from scipy.special import logsumexp

from clipood.errors import ClipoodError
from clipood.posthoc import energy, eoe, gen, get_score, load_envisioned_labels, max_logit, msp

RNG = np.random.default_rng(22)
LOGITS = RNG.normal(20.0, 5.0, size=(9, 150))  # CLIP-like 100·cos logits, K = 150 > GEN's M = 100
SMALL = RNG.normal(0.0, 3.0, size=(6, 7))  # K = 7 < M


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_msp_is_base_postprocessors_max_softmax():
    """OpenOOD base_postprocessor.py: conf = max softmax(net(x)); clipood's temperature divides first."""
    check("msp", msp(torch.tensor(LOGITS)), _softmax(LOGITS).max(axis=1))
    check("msp_T100", msp(torch.tensor(LOGITS), temperature=100.0), _softmax(LOGITS / 100.0).max(axis=1))


def test_max_logit_is_maxlogit_postprocessor():
    """OpenOOD maxlogit_postprocessor.py: conf = max_k output_k."""
    check("max_logit", max_logit(torch.tensor(LOGITS)), LOGITS.max(axis=1))


@pytest.mark.parametrize("t", [1.0, 0.5, 100.0])
def test_energy_is_ebo_postprocessor(t):
    """OpenOOD ebo_postprocessor.py: conf = T · logsumexp(output / T) (T = 1 in configs/postprocessors/ebo.yml)."""
    check(f"energy_T{t:g}", energy(torch.tensor(LOGITS), temperature=t), t * logsumexp(LOGITS / t, axis=1))


def _gen_ref(z, gamma, m):
    p = np.sort(_softmax(z), axis=1)[:, -m:]
    return -np.sum(p ** gamma * (1 - p) ** gamma, axis=1)


@pytest.mark.parametrize("z", [LOGITS, SMALL], ids=["K150", "K7"])
@pytest.mark.parametrize("gamma,m", [(0.1, 100), (2.0, 10), (0.5, 1)])
def test_gen_is_gen_postprocessor(z, gamma, m):
    """OpenOOD gen_postprocessor.py ``generalized_entropy``: −Σ over the M largest softmax probabilities of
    p^γ (1 − p)^γ (defaults γ = 0.1, M = 100 in configs/postprocessors/gen.yml)."""
    check(f"gen_g{gamma:g}_M{m}", gen(torch.tensor(z), gamma=gamma, M=m), _gen_ref(z, gamma, m))


def test_gen_defaults_are_openoods():
    assert get_score("gen").params == {"gamma": 0.1, "M": 100}
    check("gen_defaults", gen(torch.tensor(LOGITS)), _gen_ref(LOGITS, 0.1, 100))


@pytest.mark.parametrize("beta,t", [(0.25, 1.0), (0.25, 100.0), (1.0, 50.0)])
def test_eoe_is_the_releases_score(beta, t):
    """EOE release, detection_util.py: smax = softmax(output / T) over [ID | envisioned];
    score = max smax[:, :N] − β · max smax[:, N:] (β = 0.25; its T = 1 on raw cosines)."""
    n = 100
    p = _softmax(LOGITS / t)
    ref = p[:, :n].max(axis=1) - beta * p[:, n:].max(axis=1)
    check(f"eoe_b{beta:g}_T{t:g}", eoe(torch.tensor(LOGITS), n, beta=beta, temperature=t), ref)


def test_eoe_penalty_changes_the_score():
    """β must matter: with β = 0 EOE is the ID max of the joint softmax, which differs here."""
    z = torch.tensor(LOGITS)
    assert (eoe(z, 100, beta=0.25) - eoe(z, 100, beta=0.0)).abs().max() > 1e-6


def test_eoe_needs_envisioned_columns():
    with pytest.raises(ClipoodError, match="envisioned"):
        eoe(torch.tensor(LOGITS), LOGITS.shape[1])


def test_envisioned_label_files(tmp_path):
    """EOE's JSON ({"far": [...]} / one list per ID class) and plain text; the near filter drops labels sharing
    a word with an ID name (the release's remove_overlap_class, case-sensitive)."""
    far = tmp_path / "far.json"
    far.write_text('{"far": ["Sunflower", "Waterfall", " Desert ", "Sunflower"]}', encoding="utf-8")
    assert load_envisioned_labels(far) == ["Sunflower", "Waterfall", "Desert", "Sunflower"]
    assert load_envisioned_labels(far, deduplicate=True) == ["Sunflower", "Waterfall", "Desert"]
    near = tmp_path / "near.json"
    near.write_text('{"husky dog": ["gray wolf", "hot dog"], "basketball": ["balloons", "blowfish"]}',
                    encoding="utf-8")
    assert load_envisioned_labels(near) == ["gray wolf", "hot dog", "balloons", "blowfish"]
    assert load_envisioned_labels(near, id_names=["husky dog", "basketball"], remove_overlap=True) == \
        ["gray wolf", "balloons", "blowfish"]
    txt = tmp_path / "labels.txt"
    txt.write_text("# envisioned\nriver\n\nmountain  # a comment\n", encoding="utf-8")
    assert load_envisioned_labels(txt) == ["river", "mountain"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"far": [1, 2]}', encoding="utf-8")
    with pytest.raises(ClipoodError, match="list of strings"):
        load_envisioned_labels(bad)
