"""CLIPN (Wang et al., ICCV 2023; xmed-lab/CLIPN, MIT): a "no" text encoder beside the frozen CLIP, its two
losses and the CTW / ATD scores.

Part A of the seed-methods issue: the computations, no adapter registered yet. Facts from the release:

* **The "no" path** (``src/open_clip/model.py`` ``CLIP.__init__`` / ``encode_text(text, "no")``): a second copy
  of the text tower — ``token_embedding_no``, ``positional_embedding_no``, ``transformer_no``, ``ln_final_no``,
  ``text_projection_no`` — initialised from the pretrained text tower (``factory.load_state_dict`` copies every
  text key to its ``_no`` twin), plus ``prompt_no``: 16 learnable prompts of shape context_length × width, zero at
  init, **added** to the token + positional embeddings of the whole sequence. Training picks, per text, one of
  the 16 prompts or their mean (``randint(0, 17)``); evaluation uses the mean. Only the ``_no`` parameters train
  (``factory.create_model``, ``freeze=True``); the image tower and the "yes" text tower stay frozen.
  :class:`NoTextEncoder` builds this path from a clipood backbone's text path.
* **Losses** (``src/open_clip/loss.py`` ``ClipLoss``), for a batch of B image–caption pairs with unit features
  v_b, t_b (frozen) and t^no_b (the same caption through the "no" path), logit scale s (frozen CLIP's):
  q_bc = softmax([s·v_b·t_c, s·v_b·t^no_c])_0; the binary-opposite loss wants q = 1 on matched pairs and 0 on
  the others: L_bin_yes = −Σ_b log q_bb / B, L_bin_no = −Σ_{b≠c} log(1 − q_bc) / (B² − B); the
  semantic-opposite loss pushes t^no from t: L_tso = mean_b [2 − sqrt(2 − 2·t_b·t^no_b + 1e-4)] (mode ``L2``;
  ``cosine``: mean(t·t^no + 1)). Total (``training/train.py``): 0.5·(L_bin_yes + L_bin_no + L_tso).
  The release computes them over the batch gathered from all GPUs (its single-process branch leaves
  ``logits_per_image_no`` undefined); these functions take whatever batch they are given.
* **Scores** (``src/zero_shot_infer.py`` ``cal_all_metric``, ``src/classification.py``): class features are
  template ensembles (sum of unit features over the templates, normalised) for "yes" and "no"; logits
  l = 100·cos and l^no = 100·cos^no; q_i = softmax([l_i, l^no_i])_0 = σ(l_i − l^no_i);
  CTW = q_ĉ with ĉ = argmax_i l_i; ATD = Σ_i q_i·softmax(l)_i.
"""
from __future__ import annotations

import copy
import re
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipood.clip.encoders import TextPath
from clipood.errors import ClipoodError

__all__ = ["CLIPN_DEFAULTS", "NoTextEncoder", "atd_score", "clipn_binary_opposite_loss", "clipn_loss",
           "clipn_semantic_opposite_loss", "clipn_yes_probs", "ctw_score", "ensemble_text_features",
           "no_path_state_from_release"]

#: the release's values (``model.py``, ``loss.py``, ``train.py``, ``params.py``, ``run.sh``, ``classification.py``)
CLIPN_DEFAULTS = {"num_prompts": 16, "loss_weight": 0.5, "tso_mode": "L2", "tso_eps": 1e-4, "test_scale": 100.0,
                  "lr": 3e-4, "weight_decay": 0.2, "betas": (0.9, 0.98), "eps": 1e-6, "epochs": 10,
                  "batch_size": 512, "gpus": 4}

_RELEASE_KEYS = (("transformer_no.", "transformer."), ("token_embedding_no.", "token_embedding."),
                 ("positional_embedding_no", "positional_embedding"), ("ln_final_no.", "ln_final."),
                 ("text_projection_no", "text_projection"), ("prompt_no", "prompt_no"))


class NoTextEncoder(nn.Module):
    """CLIPN's "no" text path: trainable copies of a text tower's modules and ``num_prompts`` additive prompts.

    ``NoTextEncoder(backbone)`` (or a :class:`clipood.encoders.TextPath`) copies the token embedding,
    positional embedding, transformer, final norm and projection, so training it never touches the frozen
    CLIP. ``forward(tokens, prompt_index)`` → text features (B×D, not normalised); ``prompt_index`` B indices
    in [0, num_prompts] (``num_prompts`` = the mean prompt), or ``None``: the mean prompt in eval mode and a
    random index per text in train mode (``generator``), as the release draws them.
    """

    def __init__(self, source, num_prompts: int = 16) -> None:
        super().__init__()
        tp = source if isinstance(source, TextPath) else getattr(source, "text_path", None)
        if not isinstance(tp, TextPath):
            raise ClipoodError(f"NoTextEncoder needs a clipood Backbone or TextPath, got {type(source).__name__}")
        if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
            raise ClipoodError(f"num_prompts must be an integer >= 1, got {num_prompts!r}")
        self.token_embedding = copy.deepcopy(tp.token_embedding)
        self.positional_embedding = nn.Parameter(tp.positional_embedding.detach().clone())
        self.transformer = copy.deepcopy(tp.transformer)
        self.ln_final = copy.deepcopy(tp.ln_final)
        proj = tp.text_projection
        if proj is None or isinstance(proj, nn.Module):
            self.text_projection = copy.deepcopy(proj)
        else:
            self.text_projection = nn.Parameter(proj.detach().clone())
        mask = tp.attn_mask
        self.register_buffer("attn_mask", None if mask is None else mask.detach().clone(), persistent=False)
        self.pool_type, self.eos_id = tp.pool_type, tp.eos_id
        length, width = self.positional_embedding.shape
        self.prompt_no = nn.Parameter(torch.zeros(num_prompts, length, width,
                                                  dtype=self.positional_embedding.dtype))
        for p in self.parameters():
            p.requires_grad_(True)

    @property
    def num_prompts(self) -> int:
        return self.prompt_no.shape[0]

    def sample_prompt_index(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """B uniform indices in [0, num_prompts] (the last one is the mean prompt), as ``randint(0, 17)``."""
        return torch.randint(0, self.num_prompts + 1, (batch,), generator=generator)

    def prompts(self, prompt_index: torch.Tensor | None) -> torch.Tensor:
        """The additive prompt of each text (B×L×W), or the mean prompt (1×L×W) for ``None``."""
        mean = self.prompt_no.mean(dim=0, keepdim=True)
        if prompt_index is None:
            return mean
        idx = torch.as_tensor(prompt_index, device=self.prompt_no.device).long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > self.num_prompts):
            raise ClipoodError(f"prompt_index must be in [0, {self.num_prompts}] ({self.num_prompts} = the mean)")
        return torch.cat([self.prompt_no, mean])[idx]

    def forward(self, tokens: torch.Tensor, prompt_index: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if not torch.is_tensor(tokens) or tokens.ndim != 2:
            raise ClipoodError(f"tokens must be a B×L tensor of token ids, got {tuple(getattr(tokens, 'shape', ()))}")
        if prompt_index is None and self.training:
            prompt_index = self.sample_prompt_index(tokens.shape[0], generator)
        tp = TextPath(self)
        ends = tp.end_positions(tokens)
        if tp.pool_type in ("argmax", "eos") and tp.attn_mask is not None:
            tokens = tokens[:, : int(ends.max()) + 1]  # causal, end-pooled: later positions change nothing
        emb = tp.embed(tokens)
        return tp.encode_embeddings(emb + self.prompts(prompt_index)[:, : tokens.shape[1]].to(emb.dtype), ends)

    def load_release_state(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the "no" path of a CLIPN checkpoint (see :func:`no_path_state_from_release`), checking every key
        and shape first."""
        state = no_path_state_from_release(state_dict)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ClipoodError(f"the CLIPN checkpoint lacks {len(missing)} key(s) of the 'no' text path, e.g. "
                               f"{missing[0]!r}; is it a CLIPN checkpoint of this architecture?")
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if bad:
            raise ClipoodError(f"the CLIPN checkpoint's {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, the model "
                               f"{tuple(own[bad[0]].shape)}; load it onto the backbone it was trained from")
        self.load_state_dict({k: state[k] for k in own})


def no_path_state_from_release(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``_no`` entries of a CLIPN state dict (``module.`` prefixes dropped) under :class:`NoTextEncoder`'s
    names: ``transformer_no.*`` → ``transformer.*``, ``token_embedding_no.*``, ``positional_embedding_no``,
    ``ln_final_no.*``, ``text_projection_no`` and ``prompt_no``."""
    out = {}
    for key, value in state_dict.items():
        k = re.sub(r"^(module\.)+", "", key)
        for old, new in _RELEASE_KEYS:
            if k == old or (old.endswith(".") and k.startswith(old)):
                out[new + k[len(old):]] = value
                break
    if not out:
        raise ClipoodError("the state dict holds no CLIPN 'no' text path (no transformer_no.*, prompt_no, ... keys)")
    return out


# ------------------------------------------------------------------------------------------------- losses
def _check_features(image: torch.Tensor, text: torch.Tensor, text_no: torch.Tensor) -> None:
    if image.ndim != 2 or text.shape != image.shape or text_no.shape != image.shape:
        raise ClipoodError(f"image, text and 'no' text features must all be B×D, got {tuple(image.shape)}, "
                           f"{tuple(text.shape)}, {tuple(text_no.shape)}")
    if image.shape[0] < 2:
        raise ClipoodError("CLIPN's binary-opposite loss needs at least 2 image–text pairs per batch (it uses the "
                           "unmatched pairs)")


def clipn_binary_opposite_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                               text_features_no: torch.Tensor,
                               logit_scale: float | torch.Tensor = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_bin_yes, L_bin_no) over the B×B image–text pairs of a batch (unit features, matched pairs on the
    diagonal)."""
    _check_features(image_features, text_features, text_features_no)
    yes = logit_scale * image_features @ text_features.T
    no = logit_scale * image_features @ text_features_no.T
    logq = F.log_softmax(torch.stack([yes, no], dim=-1), dim=-1)                  # B×B×2
    eye = torch.eye(yes.shape[0], dtype=torch.bool, device=yes.device)
    b = yes.shape[0]
    return -logq[..., 0][eye].sum() / b, -logq[..., 1][~eye].sum() / (b * b - b)


def clipn_semantic_opposite_loss(text_features: torch.Tensor, text_features_no: torch.Tensor, mode: str = "L2",
                                 eps: float = 1e-4) -> torch.Tensor:
    """L_tso: ``L2`` = mean(2 − sqrt(2 − 2·t·t^no + eps)) (∈ [0, 2]); ``cosine`` = mean(t·t^no + 1)."""
    dot = (text_features * text_features_no).sum(-1)
    if mode == "L2":
        return (2 - torch.sqrt(2 - 2 * dot + eps)).mean()
    if mode == "cosine":
        return (dot + 1.0).mean()
    raise ClipoodError(f"unknown tso mode {mode!r}; choose 'L2' (the release's default) or 'cosine'")


def clipn_loss(image_features: torch.Tensor, text_features: torch.Tensor, text_features_no: torch.Tensor,
               logit_scale: float | torch.Tensor = 100.0, *, weight: float = 0.5, tso_mode: str = "L2",
               tso_eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """CLIPN's objective ``weight·(L_bin_yes + L_bin_no + L_tso)``; returns the total and the three terms."""
    yes, no = clipn_binary_opposite_loss(image_features, text_features, text_features_no, logit_scale)
    tso = clipn_semantic_opposite_loss(text_features, text_features_no, tso_mode, tso_eps)
    return {"loss": weight * (yes + no + tso), "bin_yes_loss": yes, "bin_no_loss": no, "tso_loss": tso}


# ------------------------------------------------------------------------------------------------- scores
def clipn_yes_probs(logits: torch.Tensor, logits_no: torch.Tensor) -> torch.Tensor:
    """q = softmax([l, l^no])_0 = σ(l − l^no), per image and class (B×N)."""
    if logits.ndim != 2 or logits_no.shape != logits.shape:
        raise ClipoodError(f"'yes' and 'no' logits must both be B×N, got {tuple(logits.shape)}, {tuple(logits_no.shape)}")
    return torch.sigmoid(logits - logits_no)


def ctw_score(logits: torch.Tensor, logits_no: torch.Tensor) -> torch.Tensor:
    """CTW: q of the predicted class ĉ = argmax_i l_i (B; the release's ``yesno_s``)."""
    q = clipn_yes_probs(logits, logits_no)
    return q.gather(1, logits.argmax(1, keepdim=True))[:, 0]


def atd_score(logits: torch.Tensor, logits_no: torch.Tensor) -> torch.Tensor:
    """ATD: Σ_i q_i·softmax(l)_i (B), one minus the release's agreement-to-differ OOD probability."""
    return (clipn_yes_probs(logits, logits_no) * F.softmax(logits, dim=1)).sum(1)


def ensemble_text_features(encode: Callable[[torch.Tensor], torch.Tensor], tokenize: Callable[[list[str]], torch.Tensor],
                           names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class features as the release builds them (``merge_yes_no_feature``): for each template, unit features of
    every name; summed over templates and normalised (N×D). ``encode`` maps tokens to features (the frozen
    ``encode_text`` for "yes", a :class:`NoTextEncoder` in eval mode for "no")."""
    if not names or not templates or any(t.count("{}") != 1 for t in templates):
        raise ClipoodError("ensemble_text_features needs names and templates with one '{}' each")
    total = 0
    for t in templates:
        total = total + F.normalize(encode(tokenize([t.format(n) for n in names])).float(), dim=-1)
    return F.normalize(total, dim=-1)
