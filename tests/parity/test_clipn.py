"""CLIPN (xmed-lab/CLIPN, MIT) against its release: the "no" path of ``src/open_clip/model.py`` ``encode_text(text,
"no")`` (token + positional embedding + ``prompt_no``, full-length causal transformer, ``ln_final_no``, EOT token
``@ text_projection_no``), the losses of ``src/open_clip/loss.py`` ``ClipLoss`` (softmax over [yes, no] per pair,
``image_text_binary_opposite_loss``, ``text_semantic_opposite_loss``, ``train.py``'s 0.5 weight), and the CTW / ATD
scores of ``src/zero_shot_infer.py`` ``cal_all_metric`` — written out again in numpy / plain torch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_check import check

from adapters.clipn import (CLIPN_DEFAULTS, NoTextEncoder, atd_score, clipn_binary_opposite_loss, clipn_loss,
                            clipn_semantic_opposite_loss, ctw_score, ensemble_text_features,
                            no_path_state_from_release)
from clipood.errors import ClipoodError

RNG = np.random.default_rng(2308)
B, D, N = 6, 12, 7


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


IMG = _unit(RNG.normal(size=(B, D)))
TXT = _unit(IMG + 0.8 * RNG.normal(size=(B, D)))
TXT_NO = _unit(-0.3 * TXT + RNG.normal(size=(B, D)))


def _release_losses(scale=100.0, mode="L2"):
    yes, no = scale * IMG @ TXT.T, scale * IMG @ TXT_NO.T
    m = np.maximum(yes, no)
    p_yes = np.exp(yes - m) / (np.exp(yes - m) + np.exp(no - m))
    eyes = np.eye(B)
    binary = eyes * p_yes + (1 - eyes) * (1 - p_yes)
    loss_bin = -np.log(binary)
    yes_l = (eyes * loss_bin).sum() / B
    no_l = ((1 - eyes) * loss_bin).sum() / (B ** 2 - B)
    if mode == "L2":
        tso = np.mean(2 - np.sqrt(2 - 2 * (TXT * TXT_NO).sum(-1) + 1e-4))
    else:
        tso = np.mean((TXT * TXT_NO).sum(-1) + 1.0)
    return yes_l, no_l, tso, (yes_l + no_l + tso) * 0.5


@pytest.mark.parametrize("mode,scale", [("L2", 20.0), ("cosine", 20.0), ("L2", 1.0)])
def test_losses_match_cliploss(mode, scale):
    """(At scale 100 this fixture's gaps saturate the release's −log(softmax) to inf; clipood's log-softmax stays
    finite — see test_log_softmax_keeps_saturated_pairs_finite.)"""
    ry, rn, rt, total = _release_losses(scale, mode=mode)
    out = clipn_loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(TXT_NO), scale, tso_mode=mode)
    check(f"clipn_bin_yes_{mode}", out["bin_yes_loss"], ry, tol=1e-9)
    check(f"clipn_bin_no_{mode}", out["bin_no_loss"], rn, tol=1e-9)
    check(f"clipn_tso_{mode}", out["tso_loss"], rt, tol=1e-12)
    check(f"clipn_total_{mode}", out["loss"], total, tol=1e-9)


def test_log_softmax_keeps_saturated_pairs_finite():
    with np.errstate(divide="ignore", invalid="ignore"):
        assert not np.isfinite(_release_losses(100.0)[0])
    out = clipn_loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(TXT_NO), 100.0)
    assert all(bool(torch.isfinite(v)) for v in out.values())


def test_defaults_are_the_releases():
    d = CLIPN_DEFAULTS
    assert (d["num_prompts"], d["loss_weight"], d["tso_mode"], d["test_scale"]) == (16, 0.5, "L2", 100.0)
    assert (d["lr"], d["weight_decay"], d["betas"], d["epochs"], d["batch_size"]) == (3e-4, 0.2, (0.9, 0.98), 10, 512)


def test_scores_match_cal_all_metric():
    cls_yes = _unit(RNG.normal(size=(N, D)))
    cls_no = _unit(RNG.normal(size=(N, D)))
    logits, logits_no = 100.0 * IMG @ cls_yes.T, 100.0 * IMG @ cls_no.T  # ViT_Classifier: scale 100
    yn = np.stack([logits, logits_no], -1)
    yn = np.exp(yn - yn.max(-1, keepdims=True))
    yesno = (yn / yn.sum(-1, keepdims=True))[:, :, 0]
    sm = np.exp(logits - logits.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    ctw_ref = yesno[np.arange(B), logits.argmax(-1)]
    atd_ref = (yesno * sm).sum(1)
    check("clipn_ctw", ctw_score(torch.tensor(logits), torch.tensor(logits_no)), ctw_ref, tol=1e-12)
    check("clipn_atd", atd_score(torch.tensor(logits), torch.tensor(logits_no)), atd_ref, tol=1e-12)
    mcm = sm.max(1)
    assert np.abs(atd_ref - mcm).max() > 1e-3 and np.abs(ctw_ref - mcm).max() > 1e-3  # not MCM in disguise


def _release_no_forward(enc, tokens, idx):
    """model.py encode_text(text, "no"): x = token_embedding_no(text) + positional_embedding_no; + prompt_no[idx];
    transformer_no over all context_length positions with the causal mask; ln_final_no; EOT @ text_projection_no."""
    x = enc.token_embedding(tokens) + enc.positional_embedding
    x = x + torch.cat([enc.prompt_no, enc.prompt_no.mean(0, keepdim=True)], 0)[idx]
    x = enc.transformer(x, attn_mask=enc.attn_mask)
    x = enc.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ enc.text_projection


def test_no_path_starts_as_the_frozen_text_tower_and_copies_it(tiny):
    enc = NoTextEncoder(tiny).eval()
    tokens = tiny.tokenize(["a photo of a cat.", "no dog here", "a tiny red ship"])
    with torch.no_grad():
        check("clipn_no_init", enc(tokens), tiny.model.encode_text(tokens).numpy(), tol=1e-5)
    assert enc.prompt_no.shape == (16, tiny.model.positional_embedding.shape[0], tiny.text_path.width)
    frozen = {id(p) for p in tiny.model.parameters()}
    assert all(id(p) not in frozen for p in enc.parameters()) and all(p.requires_grad for p in enc.parameters())


def test_no_path_with_prompts_matches_the_release_forward(tiny):
    enc = NoTextEncoder(tiny)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        enc.prompt_no.copy_(0.05 * torch.randn(enc.prompt_no.shape, generator=g))
    tokens = tiny.tokenize(["a photo of a cat.", "no dog here", "a tiny red ship", "sky"])
    idx = torch.tensor([0, 16, 3, 15])  # 16 = the mean prompt
    with torch.no_grad():
        ref = _release_no_forward(enc, tokens, idx)
        check("clipn_no_prompts", enc(tokens, idx), ref.numpy(), tol=1e-5)
        enc.eval()
        check("clipn_no_eval_mean", enc(tokens), _release_no_forward(enc, tokens, torch.full((4,), 16)).numpy(),
              tol=1e-5)
        assert float((enc(tokens, idx) - enc(tokens)).abs().max()) > 1e-3
    enc.train()
    gen = torch.Generator().manual_seed(0)
    drawn = enc.sample_prompt_index(1000, generator=gen)
    assert int(drawn.min()) == 0 and int(drawn.max()) == 16  # randint(0, num_no_texts + 1)


def test_training_the_no_path_leaves_the_frozen_clip_untouched(tiny):
    enc = NoTextEncoder(tiny).train()
    before = [p.detach().clone() for p in tiny.model.parameters()]
    tokens = tiny.tokenize(["a photo of a cat.", "a dog", "a ship"])
    with torch.no_grad():
        img = F.normalize(tiny.model.encode_image(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))),
                          dim=-1)
        txt = F.normalize(tiny.model.encode_text(tokens), dim=-1)
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    loss = clipn_loss(img, txt, F.normalize(enc(tokens, generator=torch.Generator().manual_seed(2)), dim=-1))["loss"]
    loss.backward()
    assert enc.prompt_no.grad is not None and float(enc.prompt_no.grad.abs().sum()) > 0
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.model.parameters()))


def test_release_checkpoint_keys_load_into_the_no_path(tiny):
    src = NoTextEncoder(tiny)
    with torch.no_grad():
        src.prompt_no.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
        src.ln_final.weight.add_(0.5)
    names = {"transformer.": "transformer_no.", "token_embedding.": "token_embedding_no.",
             "positional_embedding": "positional_embedding_no", "ln_final.": "ln_final_no.",
             "text_projection": "text_projection_no", "prompt_no": "prompt_no"}
    release = {"module.logit_scale": torch.tensor(4.6), "module.visual.proj": torch.zeros(2, 2),
               "module.transformer.resblocks.0.ln_1.weight": torch.zeros(64)}  # the frozen 'yes' side is ignored
    for k, v in src.state_dict().items():
        prefix = next(p for p in names if k.startswith(p))
        release["module." + names[prefix] + k[len(prefix):]] = v.clone()
    dst = NoTextEncoder(tiny).eval()
    dst.load_release_state(release)
    tokens = tiny.tokenize(["a cat", "a ship"])
    with torch.no_grad():
        assert torch.equal(dst(tokens), src.eval()(tokens))
    del release["module.prompt_no"]
    with pytest.raises(ClipoodError, match="prompt_no"):
        NoTextEncoder(tiny).load_release_state(release)
    with pytest.raises(ClipoodError, match="no CLIPN"):
        no_path_state_from_release({"visual.proj": torch.zeros(1)})


def test_ensemble_is_the_normalised_sum_of_unit_features(tiny):
    names, templates = ["cat", "ship"], ["a photo of a {}.", "a bad photo of the {}."]
    with torch.no_grad():
        got = ensemble_text_features(tiny.model.encode_text, tiny.tokenize, names, templates)
        per = [F.normalize(tiny.model.encode_text(tiny.tokenize([t.format(n) for t in templates])), dim=-1).sum(0)
               for n in names]
    check("clipn_ensemble", got, F.normalize(torch.stack(per), dim=-1).numpy(), tol=1e-6)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ClipoodError, match="at least 2"):
        clipn_binary_opposite_loss(torch.ones(1, 3), torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ClipoodError, match="tso mode"):
        clipn_semantic_opposite_loss(torch.ones(2, 3), torch.ones(2, 3), mode="l1")
    with pytest.raises(ClipoodError, match="Backbone or TextPath"):
        NoTextEncoder(object())
