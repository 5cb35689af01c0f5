"""GL-MCM and the local (patch) features of LoCoOp / GL-MCM against ``AtsuMiyai/GL-MCM`` and ``AtsuMiyai/LoCoOp``.

Result-changing item 2: on a ViT the patch features are the last block's value path, then ``ln_post`` and
``proj`` (GL-MCM ``clip/model.py`` ``ResidualAttentionBlock.forward`` / ``VisionTransformer.forward``; the same in
LoCoOp ``clip_w_local/model.py`` L196-213, L264-279); on a ModifiedResNet, ``c_proj(v_proj(x))`` of every cell
without the positional embedding (``AttentionPool2d.forward`` L93-94). Minor item: GL-MCM's ``lambda_local``
(``utils/detection_util.py`` ``get_ood_scores_clip``; ``scripts/eval_imagenet.sh`` passes 0.5).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _reference import TOL, clip, report  # noqa: F401 (clip: fixture)


def _vit_value_path(visual, x: torch.Tensor):
    """GL-MCM ``clip/model.py``: every block as the model runs it; in the last one also
    y = ln_1(x); v = out_proj(in_proj(y)[v part]); v += x; v = v + mlp(ln_2(v)); then ln_post(v)[:, 1:] @ proj.
    The global feature: ln_post of the class token of the block outputs @ proj."""
    h = visual.conv1(x).flatten(2).transpose(1, 2)
    h = torch.cat([visual.class_embedding.expand(h.shape[0], 1, -1), h], dim=1) + visual.positional_embedding
    h = visual.ln_pre(h)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        h = blk(h)
    last = blocks[-1]
    y = last.ln_1(h)
    qkv = F.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias)          # N×L×3C
    w = h.shape[-1]
    q, k, v = (F.linear(qkv[..., i * w:(i + 1) * w], last.attn.out_proj.weight, last.attn.out_proj.bias)
               for i in range(3))
    v = v + h
    v = v + last.mlp(last.ln_2(v))
    out = last(h)
    glob = visual.ln_post(out[:, 0]) @ visual.proj
    local = visual.ln_post(v)[:, 1:] @ visual.proj
    return glob, local


def test_vit_patch_features_are_the_value_path(clip):
    """``clip/model.py`` ``VisionTransformer.forward`` (GL-MCM; LoCoOp ``clip_w_local/model.py`` L264-279)."""
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    g, loc = clip.encode_images(x, local=True)
    with torch.no_grad():
        rg, rl = _vit_value_path(clip.model.visual, x)
        plain = clip.model.encode_image(x)
    err = report("ViT value-path patch features", max(float((loc - F.normalize(rl, dim=-1)).abs().max()),
                                                      float((g - F.normalize(rg, dim=-1)).abs().max()),
                                                      float((g - F.normalize(plain, dim=-1)).abs().max())))
    assert loc.shape == (3, 16, clip.embed_dim) and err <= TOL
    clip.local_path = "tokens"  # the former rule: final patch tokens, kept as a named option
    _, old = clip.encode_images(x, local=True)
    clip.local_path = "value"
    assert float((old - loc).abs().max()) > 1e-2


def _tiny_resnet_backbone():
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from clipood.clip.encoders import Backbone

    torch.manual_seed(0)
    m = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=64),
             text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    with torch.no_grad():  # a visible positional embedding, so leaving it out matters
        m.visual.attnpool.positional_embedding.normal_(0, 1.0)
    return Backbone(m, None, open_clip.get_tokenizer("ViT-B-32"), "rn-tiny", None, "rn-tiny|random")


def test_resnet_patch_features_leave_out_the_positional_embedding():
    """``clip/model.py`` ``AttentionPool2d.forward`` (GL-MCM L89-94): x_local = c_proj(v_proj(x)) on every cell
    of the last map, without the positional embedding; the global feature is the attention pool's."""
    bb = _tiny_resnet_backbone()
    vis = bb.model.visual
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    g, loc = bb.encode_images(x, local=True)
    with torch.no_grad():
        h = vis.layer4(vis.layer3(vis.layer2(vis.layer1(vis.stem(x)))))
        cells = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1, h.shape[1])
        ref = F.linear(F.linear(cells, vis.attnpool.v_proj.weight, vis.attnpool.v_proj.bias),
                       vis.attnpool.c_proj.weight, vis.attnpool.c_proj.bias)
        glob = bb.model.encode_image(x)
    err = report("ResNet patch features", max(float((loc - F.normalize(ref, dim=-1)).abs().max()),
                                              float((g - F.normalize(glob, dim=-1)).abs().max())))
    assert err <= TOL
    bb.local_path = "tokens"
    _, old = bb.encode_images(x, local=True)
    assert float((old - loc).abs().max()) > 1e-2


def _release_glmcm(global_cos, local_cos, lam, t=1.0):
    """``utils/detection_util.py`` ``get_ood_scores_clip``: −max softmax(global/T) − λ·max softmax(local/T)
    over patches (higher = more OOD there; clipood's convention is the negative)."""
    def sm(z):
        z = np.asarray(z, np.float64) / t
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return -sm(global_cos).max(1) - lam * sm(local_cos).max(axis=(1, 2))


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_glmcm_lambda_local(lam):
    """GL-MCM ``get_ood_scores_clip`` with ``--lambda_local`` (0.5 in ``scripts/eval_imagenet.sh``), T = 1 on
    cosines — through ``compute_score`` and through the evaluation wiring (``eval.lambda_local``)."""
    from clipood.evaluation.protocol import EvalSplit, SplitFeatures, evaluate_split, zero_shot_local_logits
    from clipood.scores import compute_score

    g = torch.Generator().manual_seed(3)
    n, k, d = 4, 7, 16
    text = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    feats = {"features": F.normalize(torch.randn(5, d, generator=g), dim=-1),
             "local": F.normalize(torch.randn(5, 6, d, generator=g), dim=-1), "labels": torch.zeros(5).long()}
    gl, lo = feats["features"] @ text[:n].t(), feats["local"] @ text[:n].t()
    want = -_release_glmcm(gl.numpy(), lo.numpy(), lam)
    s = compute_score("glmcm", 100 * feats["features"] @ text.t(), n, temperature=100.0,
                      local_logits=100 * lo, lambda_local=lam)
    sf = SplitFeatures(EvalSplit("base", {"id": None}, {"o": None}, list("abcd")), {"id": feats},
                       {"o": feats}, text, n)
    _, raw = evaluate_split("GL-MCM", zero_shot_local_logits, sf, score="glmcm", temperature=100.0,
                            lambda_local=lam)
    err = report(f"GL-MCM lambda_local={lam}", max(float(np.abs(s.numpy() - want).max()),
                                                   float(np.abs(raw["id/id"].numpy() - want).max())))
    assert err <= TOL
    if lam != 1.0:  # the former score (λ fixed at 1) differs
        assert np.abs(-_release_glmcm(gl.numpy(), lo.numpy(), 1.0) - want).max() > 1e-3
