"""Reference computations for the parity suite, written from the released code's equations.

They use the open_clip model's own modules (token embedding, transformer, layer norms, projections) and never
clipood's encoders, adapters or losses, so a test that compares the two can fail. Each helper names the
released function it follows.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import unit  # noqa: F401 - the parity files take it from here with the references

TOL = 1e-5


def report(name: str, err: float) -> float:
    """Print a parity test's measured max error (``pytest -s tests/parity`` lists them) and return it."""
    print(f"[parity] {name}: max error {err:.2e}")
    return err


def text_encoder(model, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CoOp ``trainers/coop.py`` ``TextEncoder.forward``: x + positional embedding → transformer → ln_final →
    the end-of-text position (argmax of the token ids) @ text_projection. Raw (not normalised) features."""
    x = embeddings + model.positional_embedding[: embeddings.shape[1]]
    x = model.transformer(x, attn_mask=model.attn_mask[: x.shape[1], : x.shape[1]])
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def prompt_features(model, tokenizer, names, ctx: torch.Tensor | None, phrase: str, end: str = ".",
                    n_ctx: int | None = None) -> torch.Tensor:
    """Unit features of ``"<phrase> <name><end>"`` with the token embeddings of positions 1..n replaced by
    ``ctx`` (n×W, shared) — CoOp's ``PromptLearner.forward`` (class token at the end) + ``TextEncoder``."""
    tokens = tokenizer([f"{phrase} {n}{end}" for n in names])
    emb = model.token_embedding(tokens).float()
    if ctx is not None:
        n = ctx.shape[0] if n_ctx is None else n_ctx
        emb = torch.cat([emb[:, :1], ctx[None].expand(len(names), -1, -1), emb[:, 1 + n:]], dim=1)
    return F.normalize(text_encoder(model, emb, tokens).float(), dim=-1)


def raw_text(model, tokenizer, prompts) -> torch.Tensor:
    """``model.encode_text`` of whole prompts, not normalised (TaskRes's ``_get_base_text_features``)."""
    with torch.no_grad():
        return model.encode_text(tokenizer(list(prompts))).float()


def cross_entropy64(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_b −log softmax(logits_b)[y_b] in float64 (``F.cross_entropy`` as the releases call it)."""
    logp = logits.double() - torch.logsumexp(logits.double(), dim=1, keepdim=True)
    return -logp[torch.arange(logits.shape[0]), labels].mean()


def tiny_clip(seed: int = 1234):
    """The random-weight ``clipood-tiny`` CLIP (a ViT), seeded."""
    from clipood.clip.backbone import load_clip

    torch.manual_seed(seed)
    return load_clip("clipood-tiny")


@pytest.fixture(scope="module")
def clip():
    """The seeded tiny CLIP, one per test module (imported by the parity files: ``from _reference import clip``)."""
    return tiny_clip()
