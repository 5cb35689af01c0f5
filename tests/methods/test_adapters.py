"""Adapter contract tests (parametrised over the registry, so new adapters are covered automatically),
feature-tuning math against an independent B×K×D reference, and the no-B×K×D memory check."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import adapters
from adapters import build_adapter, get_adapter_class, list_adapters, load_adapter, save_adapter
from clipood.errors import ClipoodError
from clipood.losses import kr_cos_loss, kr_feature_loss
from helpers import unit

K, N, D = 7, 4, 16
NAMES = list_adapters()
ID_NAMES = ["cat", "small red car", "tree", "dog"]
NEG_NAMES = ["stone", "river", "cloud"]


@pytest.fixture
def text():
    return unit(K, D, seed=1)


@pytest.fixture(scope="module")
def context(tiny):
    """A full context (names, templates, text path) over the random-weight tiny CLIP: every adapter builds on it."""
    return adapters.AdapterContext.from_backbone(tiny, ID_NAMES, NEG_NAMES, neg_templates=["a {} texture."])


def small(name: str) -> dict:
    """Config overrides that keep every registered adapter tiny."""
    fields = {f.name for f in dataclasses.fields(adapters.get_adapter_spec(name).config_cls)}
    return {"hidden_dim": 8} if "hidden_dim" in fields else {}


def make(name, context, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_adapter(name, context, **{**small(name), **overrides})


def perturb(adapter, seed=123, scale=0.3):
    """Move every parameter off its initial value, so tests are not trivially at the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return adapter


# ------------------------------------------------------------------------------------ contract
def test_builtin_adapters_registered():
    assert {"ft", "coft", "nft", "taskres", "coop"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(name, batch, context):
    adapter = make(name, context)
    v = unit(batch, context.dim, seed=2)
    for out in (adapter(v), adapter({"image_features": v, "labels": torch.zeros(batch)})):
        assert isinstance(out, adapters.AdapterOutput)
        assert out.logits.shape == (batch, K)
        assert out.base_cos is None or out.base_cos.shape in {(K,), (batch, K)}
        assert bool(torch.isfinite(out.logits).all())
        assert out.logits.abs().max() <= 1 + 1e-5  # unscaled cosines
    assert adapter.num_id == N and adapter.num_labels == K


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_only_trainable_parameters(name, context, tiny):
    adapter = perturb(make(name, context))
    v = unit(3, context.dim, seed=2)
    out = adapter(v)
    loss = F.cross_entropy(100 * out.logits, torch.tensor([0, 1, 3]))
    if out.base_cos is not None:
        loss = loss + kr_cos_loss(out.base_cos)
    # an adapter's own tensors (LSN's / NegPrompt's negative-prompt cosines) are outputs too: what its task trains
    loss = loss + sum(x.float().pow(2).sum() for x in out.extras.values() if torch.is_tensor(x) and x.requires_grad)
    loss.backward()
    assert not adapter.base_text_features.requires_grad and adapter.base_text_features.grad is None
    assert all(not b.requires_grad for b in adapter.buffers())
    assert all(p.grad is None for p in tiny.model.parameters())  # the frozen encoder gets nothing
    for pname, p in adapter.named_parameters():
        assert p.grad is not None, pname
        assert bool(torch.isfinite(p.grad).all()), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, context, tiny, tmp_path):
    adapter = perturb(make(name, context))
    v = unit(3, context.dim, seed=2)
    save_adapter(adapter, tmp_path / "a")
    weights = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    assert set(weights) == {n for n, _ in adapter.named_parameters()}  # trainable only, no base features
    assert not (tmp_path / "a" / "base_text_features.safetensors").exists()
    meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (meta["adapter"], meta["num_id"], meta["num_labels"], meta["dim"]) == (name, N, K, context.dim)
    assert meta["config"] == dataclasses.asdict(adapter.config)
    assert meta["context"]["id_names"] == ID_NAMES and meta["context"]["neg_names"] == NEG_NAMES
    assert meta["context"]["neg_templates"] == ["a {} texture."] and meta["context"]["backbone"] == "clipood-tiny"
    loaded = load_adapter(tmp_path / "a", context=context)
    assert type(loaded) is type(adapter)
    assert torch.equal(loaded(v).logits, adapter(v).logits)
    with pytest.raises(ClipoodError, match="without base text features"):
        load_adapter(tmp_path / "a")
    # names from the JSON, features re-encoded and the text path attached from the backbone
    again = load_adapter(tmp_path / "a", backbone=tiny)
    assert again.context.id_names == ID_NAMES
    torch.testing.assert_close(again(v).logits, adapter(v).logits, atol=1e-6, rtol=0)

    save_adapter(adapter, tmp_path / "b", include_base=True)
    alone = load_adapter(tmp_path / "b", backbone=tiny) if adapter.uses_text_encoder else load_adapter(tmp_path / "b")
    assert torch.equal(alone(v).logits, adapter(v).logits)


@pytest.mark.parametrize("name", NAMES)
def test_load_shape_mismatch_names_file_and_shapes(name, context, tmp_path):
    save_adapter(make(name, context), tmp_path)
    k, d = context.num_labels, context.dim
    for bad in (unit(k + 1, d), unit(k, d + 2)):
        with pytest.raises(ClipoodError) as e:
            load_adapter(tmp_path, bad)
        msg = str(e.value)
        assert "adapter_config.json" in msg and str(tuple(bad.shape)) in msg and f"({k}, {d})" in msg


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_adapter(name, context):
    a, b = make(name, context, seed=5), make(name, context, seed=5)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    v = unit(3, context.dim, seed=2)
    assert torch.equal(a(v).logits, b(v).logits)


@pytest.mark.parametrize("name", [n for n in NAMES if get_adapter_class(n).identity_at_init])
def test_identity_at_init(name, context):
    v = unit(3, context.dim, seed=2)
    out = make(name, context)(v)
    torch.testing.assert_close(out.logits, v @ context.text_features.T, atol=1e-6, rtol=0)


def test_identity_names():
    assert {"ft", "coft", "nft", "taskres"} <= {n for n in NAMES if get_adapter_class(n).identity_at_init}


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_tuned_features(name, context):
    """Where an adapter exposes its tuned features, logits and base_cos must agree with them."""
    adapter = perturb(make(name, context))
    text, d = context.text_features, context.dim
    v = unit(3, d, seed=2)
    try:
        tuned = adapter.tuned_text_features(v)
    except NotImplementedError:
        pytest.skip(f"{name} does not expose tuned text features")
    tuned = tuned.expand(3, K, d) if tuned.ndim == 2 else tuned
    out = adapter(v)
    torch.testing.assert_close(out.logits, torch.einsum("bd,bkd->bk", v, tuned), atol=1e-5, rtol=0)
    base = torch.einsum("kd,bkd->bk", text, tuned)
    torch.testing.assert_close(out.base_cos.expand(3, K), base, atol=1e-5, rtol=0)
    torch.testing.assert_close(kr_cos_loss(out.base_cos), kr_feature_loss(text, tuned), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name, context):
    cls = get_adapter_class(name)
    text, d = context.text_features, context.dim
    with pytest.raises(ClipoodError, match=rf"\({d},\)"):
        cls(text[0], 1)
    with pytest.raises(ClipoodError, match="num_id=9"):
        cls(text, 9)
    for bad in (0, -1):
        with pytest.raises(ClipoodError, match=f"num_id={bad}"):
            cls(text, bad)
    adapter = make(name, context)
    with pytest.raises(ClipoodError, match=r"\(2, 5\)"):
        adapter(torch.randn(2, 5))
    with pytest.raises(ClipoodError, match=rf"\({d},\)"):
        adapter(torch.randn(d))
    with pytest.raises(ClipoodError, match="image_features"):
        adapter({"images": torch.randn(2, d)})


def test_build_adapter_errors(text):
    with pytest.raises(ClipoodError, match="did you mean 'nft'"):
        build_adapter("nfft", text, N)
    with pytest.raises(ClipoodError, match="did you mean 'hidden_dim'"):
        build_adapter("nft", text, N, hiden_dim=8)


# ------------------------------------------------------------------------------- feature tuning
def reference_tuned(adapter, v):
    """c'_i straight from Eq. 4–6 in float64, from the raw parameters: B×K×D (no code shared with forward)."""
    sd = {k: t.detach().double() for k, t in adapter.state_dict().items()}
    cfg, c, v = adapter.config, adapter.base_text_features.double(), v.double()
    k, n = c.shape[0], adapter.num_id
    groups = [("id", 0, n), ("neg", n, k)] if cfg.distribution_aware else [("all", 0, k)]

    def meta(prefix):
        h = torch.relu(v @ sd[f"{prefix}.0.weight"].T + sd[f"{prefix}.0.bias"])
        return (h @ sd[f"{prefix}.2.weight"].T + sd[f"{prefix}.2.bias"])[:, None, :]   # B×1×D

    parts = []
    for g, s, e in groups:
        a, b = sd[f"alpha.{g}"][None], sd[f"beta.{g}"][None]                          # 1×(1|rows)×(1|D)
        if cfg.conditional:
            a, b = a + meta(f"meta_alpha.{g}"), b + meta(f"meta_beta.{g}")
        u = (a * c[s:e] + b).expand(v.shape[0], e - s, c.shape[1])
        parts.append(u / u.norm(dim=-1, keepdim=True))
    return torch.cat(parts, dim=1)


VARIANTS = [dict(mode=m, conditional=co, distribution_aware=da)
            for m in ("shared", "class_specific", "constant") for co in (False, True) for da in (False, True)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k[:4]}={x}" for k, x in v.items()))
def test_factored_forward_matches_naive_reference(variant, text):
    adapter = perturb(adapters.NFT(text, N, hidden_dim=8, **variant))
    v = unit(5, D, seed=2)
    tuned = reference_tuned(adapter, v)
    out = adapter(v)
    ref_logits = torch.einsum("bd,bkd->bk", v.double(), tuned)
    ref_base = torch.einsum("kd,bkd->bk", text.double(), tuned)
    torch.testing.assert_close(out.logits.double(), ref_logits, atol=1e-5, rtol=0)
    assert out.base_cos.shape == ((5, K) if variant["conditional"] else (K,))
    torch.testing.assert_close(out.base_cos.double().expand(5, K), ref_base, atol=1e-5, rtol=0)
    explicit = adapter.tuned_text_features(v)
    torch.testing.assert_close(explicit.double().expand(5, K, D), tuned, atol=1e-5, rtol=0)


def test_registered_defaults_and_convenience_classes(text):
    assert (adapters.FT(text, N).config.conditional, adapters.FT(text, N).config.distribution_aware) == (False, False)
    coft = adapters.CoFT(text, N, hidden_dim=8)
    assert (coft.config.conditional, coft.config.distribution_aware) == (True, False)
    nft = adapters.NFT(text, N, hidden_dim=8, conditional=True, distribution_aware=True)
    assert nft.name == "nft" and isinstance(build_adapter("nft", text, N), adapters.NFT)
    assert set(dict(nft.named_parameters())) >= {"alpha.id", "alpha.neg", "beta.id", "beta.neg"}
    assert all(adapters.NFTConfig.field_help().values())  # one line of help per field


def test_parameter_counts_match_official_nft():
    c = unit(3, 512)
    assert adapters.NFT(c, 2, hidden_dim=64).num_trainable_parameters() == 266_496
    assert adapters.NFT(c, 2, hidden_dim=8).num_trainable_parameters() == 36_896
    assert adapters.FT(c, 2).num_trainable_parameters() == 1024
    assert adapters.FT(c, 2, mode="constant").num_trainable_parameters() == 2
    assert adapters.FT(c, 2, mode="class_specific").num_trainable_parameters() == 3 * 2 * 512


def test_factors(text):
    nft = adapters.NFT(text, N, hidden_dim=8)
    v = unit(3, D, seed=2)
    f = nft.factors(v)
    assert set(f) == {"alpha_id", "beta_id", "alpha_neg", "beta_neg"}
    assert all(t.shape == (3, D) for t in f.values())
    torch.testing.assert_close(f["alpha_id"], torch.ones(3, D), atol=0, rtol=0)
    torch.testing.assert_close(f["beta_neg"], torch.zeros(3, D), atol=0, rtol=0)
    perturb(nft)
    f = nft.factors(v)
    w1, b1 = nft.meta_beta["neg"][0].weight, nft.meta_beta["neg"][0].bias
    w2, b2 = nft.meta_beta["neg"][2].weight, nft.meta_beta["neg"][2].bias
    expected = nft.beta["neg"] + torch.relu(v @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(f["beta_neg"], expected)
    fc = perturb(adapters.CoFT(text, N, hidden_dim=8)).factors(v)  # one transform: id and neg coincide
    assert torch.equal(fc["alpha_id"], fc["alpha_neg"]) and torch.equal(fc["beta_id"], fc["beta_neg"])
    with pytest.raises(ClipoodError, match="class_specific"):
        adapters.NFT(text, N, mode="class_specific").factors(v)


@pytest.mark.parametrize("bad, match", [
    (dict(hidden_dim=0), "hidden_dim must be >= 1, got 0"),
    (dict(mode="csc"), "unknown mode 'csc'"),
    (dict(conditional="yes"), "conditional must be true or false"),
])
def test_feature_tuning_config_checks(bad, match, text):
    with pytest.raises(ClipoodError, match=match):
        adapters.NFT(text, N, **bad)


def test_distribution_aware_needs_negatives(text):
    with pytest.raises(ClipoodError, match="num_id=7 equals K=7"):
        adapters.NFT(text, K)
    assert adapters.CoFT(text, K, hidden_dim=8)(unit(2, D)).logits.shape == (2, K)


def test_half_precision_inputs(text):
    nft = perturb(adapters.NFT(text.half(), N, hidden_dim=8))
    v = unit(2, D, seed=2)
    out = nft(v.half())
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, nft(v).logits, atol=2e-3, rtol=0)


# ---------------------------------------------------------------------------------------- TaskRes
@pytest.mark.parametrize("rows", ["id", "all"])
def test_taskres_formula(rows, text):
    tr = perturb(adapters.TaskRes(text, N, mu=0.7, residual_rows=rows))
    assert tr.residual.shape == ((N if rows == "id" else K), D)
    v = unit(3, D, seed=2)
    x = torch.zeros(K, D, dtype=torch.float64)
    x[: tr.residual.shape[0]] = tr.residual.detach().double()
    tuned = text.double() + 0.7 * x
    tuned = tuned / tuned.norm(dim=-1, keepdim=True)
    out = tr(v)
    torch.testing.assert_close(out.logits.double(), v.double() @ tuned.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.base_cos.double(), (text.double() * tuned).sum(-1), atol=1e-6, rtol=0)
    if rows == "id":
        torch.testing.assert_close(out.logits[:, N:], v @ text[N:].T, atol=1e-6, rtol=0)  # negatives untouched
        assert torch.equal(out.base_cos[N:], torch.ones(K - N))


def test_taskres_config_checks(text):
    with pytest.raises(ClipoodError, match="unknown residual_rows 'neg'"):
        adapters.TaskRes(text, N, residual_rows="neg")
    with pytest.raises(ClipoodError, match="mu must be a finite number"):
        adapters.TaskRes(text, N, mu="big")


# ------------------------------------------------------------------------------------- efficiency
class AllocationTracker(TorchDispatchMode):
    """Sums the bytes of every new tensor storage an op returns (views and in-place results alias an input)."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)}
        for t in tree_flatten(out)[0]:
            if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in inputs:
                nbytes = t.untyped_storage().nbytes()
                self.total += nbytes
                self.largest = max(self.largest, nbytes)
        return out


def test_conditional_nft_forward_memory_and_exactness_at_full_size():
    b, k, n, d = 256, 11_000, 1_000, 512
    torch.manual_seed(0)
    text = unit(k, d, seed=3)
    nft = perturb(adapters.NFT(text, n, hidden_dim=64), scale=0.05)
    v = unit(b, d, seed=4)
    tracker = AllocationTracker()
    with tracker:
        out = nft(v)                               # with autograd on, as in training
    mb = 2**20
    assert tracker.largest < 100 * mb, tracker.largest / mb
    assert tracker.total < 200 * mb, tracker.total / mb   # the naive B×K×D tensor alone is 5.8 GB
    assert out.logits.shape == (b, k) and out.base_cos.shape == (b, k)
    for i in (0, 77, 255):                         # row by row against Eq. 6 for a few images
        tuned = reference_tuned(nft, v[i:i + 1])[0]
        torch.testing.assert_close(out.logits[i].double(), tuned @ v[i].double(), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.base_cos[i].double(), (tuned * text.double()).sum(-1), atol=1e-5, rtol=0)


def test_feature_tuning_ignores_autocast(text):
    nft = perturb(adapters.NFT(text, N, hidden_dim=8))
    v = unit(3, D, seed=2)
    ref = nft(v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nft(v)
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=0)
