"""ID-like (Bai et al., CVPR 2024; the paper's §3.2–3.3) against its training script as a public copy shows it
(``utils/id_like_loss.py`` ``get_loss``: CE over all N + M prompts, ``log(p_in + 1e-16)``, pairwise
``F.cosine_embedding_loss(..., target=-1)``; ``utils/id_like.py`` ``select_in_out`` (``topk(sim)`` / ``topk(-sim)``)
and ``get_result`` (``Σ softmax[:, n_cls:] − 1``, negated by ``get_and_print_results``)), written out in numpy."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_check import check

from adapters.idlike import (IDLIKE_DEFAULTS, idlike_diversity_loss, idlike_loss, idlike_out_loss, idlike_score,
                             idlike_select_crops, ood_prompt_context)
from clipood.errors import ClipoodError

RNG = np.random.default_rng(2311)
N, M, D = 6, 5, 16
BI, BO = 7, 9
ID_LOGITS = RNG.normal(10.0, 4.0, size=(BI, N + M))
OOD_LOGITS = RNG.normal(10.0, 4.0, size=(BO, N + M))
LABELS = RNG.integers(0, N, size=BI)
OOD_PROMPTS = RNG.normal(size=(M, D)) + 0.5  # pairwise cosines of both signs
OOD_PROMPTS[1] = -OOD_PROMPTS[0] + 0.1 * RNG.normal(size=D)


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _release_loss(lam=(1.0, 0.3, 0.2)):
    loss_in = -_log_softmax(ID_LOGITS)[np.arange(BI), LABELS].mean()
    p = np.exp(_log_softmax(OOD_LOGITS))
    flag_out = np.array([0] * N + [1] * M)
    p_in = np.sum(p * (1 - flag_out), axis=1)
    loss_out = np.mean(np.log(p_in + 1e-16))
    t = OOD_PROMPTS / np.linalg.norm(OOD_PROMPTS, axis=1, keepdims=True)
    diff, pairs = 0.0, 0
    for a in range(M - 1):
        for b in range(a + 1, M):
            diff += max(0.0, float(t[a] @ t[b]))  # cosine_embedding_loss, target −1, margin 0
            pairs += 1
    diff /= M * (M - 1) / 2.0
    assert pairs == M * (M - 1) // 2
    return loss_in, loss_out, diff, lam[0] * loss_in + lam[1] * loss_out + lam[2] * diff


def test_defaults_are_the_papers_imagenet_setting():
    d = IDLIKE_DEFAULTS
    assert (d["num_crops"], d["num_selected"], d["num_ood_prompts"], d["n_ctx"], d["ood_n_ctx"]) == (256, 32, 100, 16, 16)
    assert (d["lam_in"], d["lam_out"], d["lam_div"], d["lr"], d["epochs"], d["shots"]) == (1.0, 0.3, 0.2, 5e-3, 3, 4)


def test_loss_matches_the_authors_get_loss():
    ref_in, ref_out, ref_div, ref_total = _release_loss()
    out = idlike_loss(torch.tensor(ID_LOGITS), torch.tensor(LABELS), torch.tensor(OOD_LOGITS),
                      torch.tensor(OOD_PROMPTS), N)
    check("idlike_in", out["in_loss"], ref_in, tol=1e-10)
    check("idlike_out", out["out_loss"], ref_out, tol=1e-10)
    check("idlike_div", out["div_loss"], ref_div, tol=1e-10)
    check("idlike_total", out["loss"], ref_total, tol=1e-10)
    assert 0 < ref_div < 1 and ref_out < 0


def test_diversity_hinges_at_zero_cosine():
    """Two opposite prompts and one orthogonal pair contribute 0; only positive cosines count."""
    t = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    check("idlike_div_hand", idlike_diversity_loss(t), (0.0 + 0.6 + 0.0) / 3, tol=1e-12)
    assert float(idlike_diversity_loss(t[:1])) == 0.0


def test_ood_mass_rule_is_minus_log_of_the_ood_prompt_mass():
    p = np.exp(_log_softmax(OOD_LOGITS))
    ref = -np.mean(np.log(p[:, N:].sum(1)))
    check("idlike_out_ood_mass", idlike_out_loss(torch.tensor(OOD_LOGITS), N, "ood_mass"), ref, tol=1e-10)
    with pytest.raises(ClipoodError, match="out_rule"):
        idlike_out_loss(torch.tensor(OOD_LOGITS), N, "oe")


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_score_matches_get_result(temperature):
    z = OOD_LOGITS / temperature
    p = np.exp(_log_softmax(z))
    released = np.sum(p[:, N:], axis=1) - 1  # get_result; get_and_print_results ranks −score
    check(f"idlike_score_sum_T{temperature:g}", idlike_score(torch.tensor(OOD_LOGITS), N, temperature=temperature),
          -released, tol=1e-10)
    check(f"idlike_score_max_T{temperature:g}", idlike_score(torch.tensor(OOD_LOGITS), N, "max", temperature),
          p[:, :N].max(1), tol=1e-10)


def test_crop_selection_is_top_and_bottom_q_by_label_similarity():
    g = torch.Generator().manual_seed(3)
    crops = F.normalize(torch.randn(3, 20, D, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(3, D, generator=g, dtype=torch.float64), dim=-1)
    id_idx, ood_idx = idlike_select_crops(crops, text, q=4)
    for b in range(3):
        sim = (crops[b] @ text[b]).numpy()
        assert set(id_idx[b].tolist()) == set(np.argsort(-sim)[:4].tolist())  # torch.topk(sim, k)
        assert set(ood_idx[b].tolist()) == set(np.argsort(sim)[:4].tolist())  # torch.topk(-sim, k)
        assert float(sim[id_idx[b][0]]) == sim.max() and float(sim[ood_idx[b][0]]) == sim.min()


def test_ood_prompts_through_a_prompt_bank_are_the_learned_word_prompts(tiny):
    """``[octx_1..octx_L][w_j].`` built token by token (tokenise 'X … X X.', put the learned vectors in place,
    run the text path) equals the PromptBank route over empty names."""
    from adapters.prompting import PromptBank

    tp, L = tiny.text_path, 3
    g = torch.Generator().manual_seed(4)
    shared = 0.02 * torch.randn(L, tp.width, generator=g)
    words = 0.02 * torch.randn(M, tp.width, generator=g)
    bank = PromptBank(tp, tiny.tokenizer, [""] * M, L + 1)
    got = bank.encode(ood_prompt_context(shared, words))
    tokens = tiny.tokenize([" ".join(["X"] * L) + " X."] * M)
    with torch.no_grad():
        emb = tp.embed(tokens).clone()
        emb[:, 1:1 + L] = shared
        emb[:, 1 + L] = words
        ref = F.normalize(tp.encode_embeddings(emb, tokens).float(), dim=-1)
    check("idlike_ood_prompt_bank", got, ref.numpy(), tol=1e-5)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ClipoodError, match="ID then M"):
        idlike_loss(torch.tensor(ID_LOGITS), torch.tensor(LABELS), torch.tensor(OOD_LOGITS),
                    torch.tensor(OOD_PROMPTS[:2]), N)
    with pytest.raises(ClipoodError, match="B×P×D"):
        idlike_select_crops(torch.zeros(4, 3), torch.zeros(4, 3), 1)
    with pytest.raises(ClipoodError, match="rule"):
        idlike_score(torch.tensor(OOD_LOGITS), N, "mcm")
