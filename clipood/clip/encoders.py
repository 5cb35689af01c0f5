"""A loaded CLIP's encoders: :class:`Backbone` (a frozen open_clip model with its transform and tokenizer;
images → global + patch features in the joint space, texts → features over one or many templates) and
:class:`TextPath` (the text tower as explicit steps, for prompt learners that feed token embeddings).
Loading (weights, tags, offline configs) lives in :mod:`clipood.clip.backbone`.

Patch (local) features, ``Backbone.local_path``:

- ``"value"`` (default; LoCoOp's ``clip_w_local`` and GL-MCM's ``clip/model.py``): on a ViT, the value path of the
  last block — with x the block's input, v = x + out_proj(W_v·ln_1(x) + b_v), v = v + mlp(ln_2(v)), then ln_post
  and proj, patch tokens only; on a ModifiedResNet, c_proj(v_proj(h)) of the attention pool on every cell of the
  last map, without the positional embedding.
- ``"tokens"``: clipood's former rule — the ViT's final patch tokens (after ln_post, proj), the ResNet cells with
  the positional embedding added before v_proj.

The timm CNN tower of ``clipood-mini`` has one rule: every cell of its last map through the tower's linear head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ClipoodError

__all__ = ["Backbone", "TextPath", "LOCAL_PATHS"]

#: how patch features are taken from the image tower (module docstring)
LOCAL_PATHS = ("value", "tokens")


# --------------------------------------------------------------------------------------------- text path
class TextPath:
    """The text tower as explicit steps, for prompt learners that feed token embeddings.

    ``encode_embeddings(text_path.embed(tokens), tokens)`` reproduces ``model.encode_text(tokens)``; replace some
    rows of ``embed(tokens)`` with learnable context vectors to build a soft prompt.
    """

    def __init__(self, model: torch.nn.Module):
        tower = getattr(model, "text", None)
        if tower is not None and not hasattr(tower, "token_embedding"):
            raise ClipoodError(f"the text tower of {type(model).__name__} ({type(tower).__name__}) does not expose "
                               f"token embeddings; prompt learning supports open_clip's built-in text transformer")
        src = tower if tower is not None else model
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.pool_type = getattr(src, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
        self.eos_id = getattr(src, "eos_id", None) or getattr(model, "text_eos_id", None)
        if getattr(src, "cls_emb", None) is not None or getattr(src, "use_pad_mask", False):
            raise ClipoodError("text towers with a class token or padding mask are not supported by TextPath")
        self._mask_owner = src

    @property
    def attn_mask(self) -> torch.Tensor | None:
        return getattr(self._mask_owner, "attn_mask", None)

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B×L) → token embeddings (B×L×W), before positional embeddings."""
        return self.token_embedding(tokens)

    def end_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the pooled position of each sequence (the end-of-text token for CLIP)."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)

    def encode_embeddings(self, x: torch.Tensor, tokens_or_positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B×L×W) → text features (B×D, not normalised).

        ``tokens_or_positions``: the token ids (B×L; the end position is found as open_clip does) or the end
        positions themselves (B).
        """
        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else x.dtype
        L = x.shape[1]
        x = x.to(cast) + self.positional_embedding[:L].to(cast)
        mask = self.attn_mask
        if mask is not None:
            mask = mask[:L, :L]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        pos = tokens_or_positions if tokens_or_positions.ndim == 1 else self.end_positions(tokens_or_positions)
        x = x[torch.arange(x.shape[0], device=x.device), pos]
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, torch.nn.Linear) else x @ self.text_projection
        return x


# --------------------------------------------------------------------------------------------- backbone
@dataclass
class Backbone:
    """A frozen open_clip model with its eval transform and tokenizer."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    model_name: str
    pretrained: str | None
    identifier: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    local_path: str = "value"  #: patch features: "value" (LoCoOp / GL-MCM) | "tokens" (module docstring)

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if proj is None and hasattr(self.model, "text"):
            proj = getattr(self.model.text, "text_projection", None)
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        if proj is not None:
            return proj.shape[1]
        return int(self.encode_text(["a"]).shape[1])

    @property
    def image_size(self) -> int:
        s = getattr(self.model.visual, "image_size", 224)
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @property
    def text_path(self) -> TextPath:
        return TextPath(self.model)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    # ---- images
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, local: bool = False, normalize: bool = True):
        """Preprocessed images (B×3×H×W) → global features (B×D), and local features (B×P×D) if ``local``."""
        images = images.to(self.device, self.dtype)
        if not local:
            g = self.model.encode_image(images)
            return F.normalize(g.float(), dim=-1) if normalize else g.float()
        g, loc = self._encode_with_local(images)
        if normalize:
            g, loc = F.normalize(g, dim=-1), F.normalize(loc, dim=-1)
        return g, loc

    @property
    def local_key(self) -> str:
        """What cache keys of patch features record about how they were taken."""
        return f"local:{self.local_path}"

    def _encode_with_local(self, x: torch.Tensor):
        visual = self.model.visual
        if self.local_path not in LOCAL_PATHS:
            raise ClipoodError(f"Backbone.local_path={self.local_path!r}; use one of {', '.join(LOCAL_PATHS)}")
        if hasattr(visual, "_embeds") and hasattr(visual, "transformer") and hasattr(visual, "_pool"):
            return self._vit_local(visual, x)
        if hasattr(visual, "attnpool") and hasattr(visual, "stem"):
            # ModifiedResNet: every cell of the last map through the attention pool's value and output projections
            h = visual.stem(x)
            for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
                h = layer(h)
            pooled = visual.attnpool(h)
            ap = visual.attnpool
            tokens = h.flatten(2).transpose(1, 2)  # B×HW×C
            if self.local_path == "tokens":
                tokens = tokens + ap.positional_embedding[1:].to(tokens.dtype)
            tokens = ap.c_proj(ap.v_proj(tokens))
            return pooled.float(), tokens.float()
        if hasattr(visual, "trunk") and hasattr(visual, "head") and hasattr(visual.trunk, "forward_head"):
            # timm CNN tower (clipood-mini): every cell of the last map through the tower's linear head
            h = visual.trunk.forward_features(x)
            if h.ndim == 4:
                pooled = visual.head(visual.trunk.forward_head(h))
                tokens = visual.head(h.flatten(2).transpose(1, 2))  # B×HW×D
                return pooled.float(), tokens.float()
        raise ClipoodError(f"local (patch) features are not available for the image tower "
                           f"{type(visual).__name__}; use a ViT, ModifiedResNet or timm CNN tower")

    def _vit_local(self, visual, x: torch.Tensor):
        """ViT: the pooled feature as ``encode_image`` computes it, and the patch features (``local_path``)."""
        t = visual.transformer
        h = visual._embeds(x)
        if self.local_path == "tokens":  # final patch tokens after the final norm, projected
            pooled, tokens = visual._pool(t(h))
            if getattr(visual, "final_ln_after_pool", False):
                tokens = visual.ln_post(tokens)
        else:
            blocks = list(t.resblocks)
            last = blocks[-1]
            attn = getattr(last, "attn", None)
            if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None:
                raise ClipoodError(f"the value-path patch features need open_clip's standard ViT blocks, not "
                                   f"{type(last).__name__}; set backbone.local_path = 'tokens'")
            batch_first = getattr(t, "batch_first", True)
            h = h if batch_first else h.transpose(0, 1)
            for blk in blocks[:-1]:
                h = blk(h)
            out = last(h)
            w = attn.embed_dim
            v = F.linear(last.ln_1(h), attn.in_proj_weight[2 * w:],
                         None if attn.in_proj_bias is None else attn.in_proj_bias[2 * w:])
            v = h + last.ls_1(attn.out_proj(v))
            v = v + last.ls_2(last.mlp(last.ln_2(v)))
            if not batch_first:
                out, v = out.transpose(0, 1), v.transpose(0, 1)
            pooled, _ = visual._pool(out)
            prefix = 1 if getattr(visual, "class_embedding", None) is not None else 0
            tokens = visual.ln_post(v[:, prefix:])
        if visual.proj is not None:
            pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
        return pooled.float(), tokens.float()

    # ---- texts
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], templates: Sequence[str] | None = None, batch_size: int = 256,
                    progress: bool = False, normalize: bool = True) -> torch.Tensor:
        """Texts → features (N×D). With ``templates``, ``texts`` are class names: each is formatted with every
        template, features are normalised, averaged over templates and normalised again (CLIP's ensemble)."""
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            raise ClipoodError("encode_text got an empty list of texts")
        prompts = [t.format(c) for c in texts for t in templates] if templates else texts
        out = []
        for s in tqdm(range(0, len(prompts), batch_size), desc="encode text", disable=not progress,
                      mininterval=2, leave=False):
            f = self._encode_tokens(self.tokenize(prompts[s:s + batch_size])).float()
            out.append(F.normalize(f, dim=-1) if (normalize or templates) else f)
        feats = torch.cat(out)
        if templates:
            feats = feats.view(len(texts), len(templates), -1).mean(1)
            feats = F.normalize(feats, dim=-1) if normalize else feats
        return feats


    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``model.encode_text`` but only over the positions up to the last end-of-text token of the batch.

        Exact for causal, end-token-pooled text towers (CLIP's): later positions cannot influence earlier ones.
        Short prompts ("the nice cat.") then cost ~10 positions instead of 77 (≈3× faster mining).
        """
        try:
            tp = self._text_path_cache
        except AttributeError:
            try:
                tp = TextPath(self.model)
                if tp.pool_type not in ("argmax", "eos") or tp.attn_mask is None:
                    tp = None
            except ClipoodError:
                tp = None
            self._text_path_cache = tp
        if tp is None:
            return self.model.encode_text(tokens)
        ends = tp.end_positions(tokens)
        L = int(ends.max()) + 1
        t = tokens[:, :L]
        return tp.encode_embeddings(tp.embed(t), ends)
