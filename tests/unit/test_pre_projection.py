"""Pre-projection image features and the projection (clipood.clip.pre_projection), against each tower's own forward:
``projection(pre_projection_features(x))`` must be ``encode_image(x)``."""
import pytest
import torch
import torch.nn.functional as F

from clipood.errors import ClipoodError
from clipood.posthoc import LinearHead, react
from clipood.clip.pre_projection import image_encoder, image_projection, pre_projection_features


@pytest.fixture(scope="module")
def resnet():
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    return ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=8).eval()


def _pixels(size, n=3):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def test_vit_cls_after_ln_post_projects_to_encode_image(tiny):
    x = _pixels(tiny.image_size)
    with torch.no_grad():
        h = pre_projection_features(tiny, x)
        v = tiny.model.visual
        ref_h = v.ln_post(v.transformer(v._embeds(x)))[:, 0]  # written out: CLS token after the final norm
        assert h.shape == (3, 64)
        assert torch.allclose(h, ref_h, atol=1e-6)
        assert torch.allclose(image_projection(tiny)(h), tiny.model.encode_image(x), atol=1e-5)


def test_timm_tower_pooled_features_project_to_encode_image(mini):
    x = _pixels(mini.image_size)
    with torch.no_grad():
        h = pre_projection_features(mini, x)
        fmap = mini.model.visual.trunk.forward_features(x)
        assert h.shape == (3, 256) and bool((h >= 0).all())  # post-ReLU average of the 4×4 map
        assert torch.allclose(h, fmap.mean(dim=(2, 3)), atol=1e-6)
        assert torch.allclose(image_projection(mini)(h), mini.model.encode_image(x), atol=1e-5)


def test_resnet_attention_pool_before_its_output_layer(resnet):
    x = _pixels(64, n=2)
    with torch.no_grad():
        h = pre_projection_features(resnet, x)
        assert h.shape == (2, 256)  # 32 · width
        assert torch.allclose(image_projection(resnet)(h), resnet(x), atol=1e-5)
        pooled = pre_projection_features(resnet, x, resnet_point="avgpool")
        fmap = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(resnet.stem(x)))))
        assert torch.allclose(pooled, fmap.mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(ClipoodError, match="no linear map"):
        image_projection(resnet, resnet_point="avgpool")
    with pytest.raises(ClipoodError, match="resnet_point"):
        pre_projection_features(resnet, x, resnet_point="gap")


def test_projected_head_gives_clips_logits(tiny):
    """s · cos(encode_image(x), T) from the pre-projection features; ReAct with an infinite threshold is the
    energy of CLIP's own logits."""
    x = _pixels(tiny.image_size)
    text = torch.randn(4, tiny.embed_dim, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        head = image_projection(tiny).head(text, logit_scale=100.0)
        h = pre_projection_features(tiny, x)
        logits = 100.0 * F.normalize(tiny.model.encode_image(x), dim=-1) @ F.normalize(text, dim=-1).T
        assert torch.allclose(head(h), logits, atol=1e-4)
        assert torch.allclose(react(h, head, threshold=float("inf")), torch.logsumexp(logits, dim=1), atol=1e-4)
        joint = LinearHead.from_text_features(text, 100.0)
        assert torch.allclose(joint(image_encoder(tiny)(x)), logits, atol=1e-4)


def test_bad_inputs(tiny):
    with pytest.raises(ClipoodError, match="images"):
        pre_projection_features(tiny, torch.zeros(3, 64, 64))
    with pytest.raises(ClipoodError, match="not available"):
        pre_projection_features(torch.nn.Linear(2, 2), torch.zeros(1, 3, 8, 8))
