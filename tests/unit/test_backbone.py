"""Backbone loader: shipped configs, local files, offline tags, text path, local features."""
import json
import time

import pytest
import torch

import clipood
from clipood.clip.backbone import load_clip
from clipood.errors import ClipoodError


def test_text_path_reproduces_encode_text(tiny):
    tp = tiny.text_path
    tok = tiny.tokenize(["a photo of a cat.", "the nice dog", "x"])
    ref = tiny.model.encode_text(tok)
    got = tp.encode_embeddings(tp.embed(tok), tok)
    assert torch.allclose(ref, got, atol=1e-6)
    # end positions given explicitly (what a prompt learner passes) give the same features
    got2 = tp.encode_embeddings(tp.embed(tok), tp.end_positions(tok))
    assert torch.allclose(ref, got2, atol=1e-6)
    # a soft prompt that replaces a word embedding changes the output (the path really uses the embeddings)
    x = tp.embed(tok).clone()
    x[:, 1] += 1.0
    assert not torch.allclose(tp.encode_embeddings(x, tok), ref)


def test_encode_text_template_ensemble_is_mean_of_normalised(tiny):
    t = ["a photo of a {}.", "a drawing of a {}."]
    got = tiny.encode_text(["cat", "dog"], templates=t)
    each = tiny.model.encode_text(tiny.tokenize([s.format(c) for c in ["cat", "dog"] for s in t])).float()
    each = torch.nn.functional.normalize(each, dim=-1).view(2, 2, -1).mean(1)
    assert torch.allclose(got, torch.nn.functional.normalize(each, dim=-1), atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2))


def test_local_features_vit_and_resnet(tiny):
    x = torch.randn(2, 3, 64, 64)
    g, loc = tiny.encode_images(x, local=True)
    assert g.shape == (2, 64) and loc.shape == (2, 16, 64)  # 64 px / patch 16 → 4×4 patches
    assert torch.allclose(g, tiny.encode_images(x), atol=1e-5)
    mini = load_clip("clipood-mini")
    g2, loc2 = mini.encode_images(torch.randn(2, 3, 32, 32), local=True)
    assert g2.shape == (2, 128) and loc2.shape[0] == 2 and loc2.shape[2] == 128
    assert torch.allclose(loc2.norm(dim=-1), torch.ones(loc2.shape[:2]), atol=1e-5)


def test_local_safetensors_and_pt_and_local_dir(tmp_path, tiny):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pt")
    x = torch.randn(1, 3, 64, 64)
    ref = tiny.encode_images(x)
    for f in ("w.safetensors", "w.pt"):
        b = load_clip("clipood-tiny", pretrained=tmp_path / f)
        assert torch.allclose(b.encode_images(x), ref, atol=1e-6)
        assert f in b.identifier
    d = tmp_path / "dir"
    d.mkdir()
    cfg = json.loads((clipood.clip.backbone._CONFIG_DIR / "clipood-tiny.json").read_text())
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file(sd, str(d / "open_clip_model.safetensors"))
    b = load_clip(f"local-dir:{d}")
    assert torch.allclose(b.encode_images(x), ref, atol=1e-6)


def test_offline_tag_fails_fast_with_actionable_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(ClipoodError) as e:
        load_clip("ViT-B-16", pretrained="openai")
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "ViT-B-16" in msg and "'openai'" in msg and "pretrained=" in msg and "\n" not in msg


def test_download_that_never_starts_times_out(monkeypatch):
    """Without HF_HUB_OFFLINE a dead network must not hang for 45 s: the wait is bounded."""
    import open_clip

    from clipood.clip import backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbone, "_hf_cached_file", lambda cfg: None)
    monkeypatch.setattr(backbone, "hub_unreachable", lambda timeout=3.0: None)  # the hub answers, sends nothing
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg: time.sleep(30))
    t = time.perf_counter()
    with pytest.raises(ClipoodError, match="no download started within 1s"):
        load_clip("RN50", pretrained="openai", download_timeout=1.0)
    assert time.perf_counter() - t < 5


def test_unknown_model_tag_and_missing_file():
    with pytest.raises(ClipoodError, match="did you mean 'ViT-B-16'"):
        load_clip("ViT-B-61")
    with pytest.raises(ClipoodError, match="pretrained tag"):
        load_clip("ViT-B-16", pretrained="opena")
    with pytest.raises(ClipoodError, match="checkpoint file not found"):
        load_clip("clipood-tiny", pretrained="/nonexistent/w.safetensors")


def test_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    save_file({"visual.conv1.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ClipoodError, match="do not fit model 'clipood-tiny'"):
        load_clip("clipood-tiny", pretrained=tmp_path / "bad.safetensors")


@pytest.mark.parametrize("text_extra", [{}, {"no_causal_mask": True, "pool_type": "last"}])
def test_text_path_on_custom_text_tower(tmp_path, text_extra):
    """CustomTextCLIP (model.text = TextTransformer), causal/argmax and bidirectional/last-token variants."""
    import open_clip

    cfg = json.loads((clipood.clip.backbone._CONFIG_DIR / "clipood-tiny.json").read_text())
    cfg = {**cfg, "custom_text": True, "text_cfg": {**cfg["text_cfg"], **text_extra}}
    name = f"ct-{len(text_extra)}"
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    assert type(model).__name__ == "CustomTextCLIP"
    tok = open_clip.get_tokenizer("clipood-tiny")(["a photo of a cat.", "x y z"])
    tp = clipood.clip.encoders.TextPath(model)
    assert torch.allclose(model.encode_text(tok), tp.encode_embeddings(tp.embed(tok), tok), atol=1e-6)
