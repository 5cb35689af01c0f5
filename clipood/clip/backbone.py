"""Load an open_clip CLIP (pretrained tag, local file, ``local-dir:`` folder or a shipped offline config) and
encode images (global + local patch features in the joint space) and texts (one or many templates).

The caller chooses device and dtype; nothing here picks a GPU. ``Backbone.text_path`` exposes the text tower
so that prompt learners can feed token *embeddings* instead of tokens.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ClipoodError, unknown
from .encoders import Backbone

_PACKAGE_DIR = Path(__file__).parent.parent  # clipood/
_CONFIG_DIR = _PACKAGE_DIR / "model_configs"
#: shipped weights for offline configs: model name → file inside the package
SHIPPED_WEIGHTS = {"clipood-mini": _PACKAGE_DIR / "mini" / "weights" / "clipood-mini.safetensors"}
_registered = False


def register_model_configs() -> list[str]:
    """Register clipood's shipped open_clip configs (``clipood-tiny``, ``clipood-mini``). Idempotent."""
    global _registered
    import open_clip

    if not _registered:
        from ..mini.tower import register_tower

        register_tower()  # the timm image tower of clipood-mini
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.json"))


# --------------------------------------------------------------------------------------------- weights
def _file_fingerprint(path: Path) -> str:
    """sha256 of size + first 16 MiB: cheap, stable identifier for cache keys."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(16 << 20))
    return h.hexdigest()[:16]


def _load_state_dict(path: Path) -> dict:
    """Read a checkpoint file without unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:
            raise ClipoodError(f"cannot read safetensors checkpoint {path}: {e}; re-download or re-export it") from None
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ClipoodError(
                f"refusing to load {path}: weights-only loading failed ({type(e).__name__}); it is a pickle with "
                f"arbitrary objects. Convert it once in a trusted environment to safetensors "
                f"(safetensors.torch.save_file(state_dict, 'model.safetensors')) and pass that file") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ClipoodError(f"checkpoint {path} does not hold a state dict (got {type(sd).__name__})")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _mismatch_summary(expected: dict, got: dict) -> str:
    """One short line on why a state dict does not fit (torch's message lists every key, one per line)."""

    def first(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(expected) & set(got))
              if hasattr(got[k], "shape") and tuple(got[k].shape) != tuple(expected[k].shape)]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of the wrong shape (checkpoint vs model: {first(shapes)})")
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({first(unexpected)})")
    return "; ".join(parts) or "the state dict does not load"


def _hf_cached_file(model_cfg: dict) -> str | None:
    """Path of a tag's weights in the local Hugging Face cache, or None (never touches the network)."""
    hub = model_cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives
    except ImportError:  # pragma: no cover - very old versions
        return None
    repo, filename = os.path.split(hub)
    names = list(_get_safe_alternatives(filename or HF_WEIGHTS_NAME)) + [filename or HF_WEIGHTS_NAME]
    for name in names:
        hit = try_to_load_from_cache(repo_id=repo, filename=name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face endpoint (``HF_ENDPOINT``, or the proxy of ``HTTPS_PROXY`` when set) cannot be reached
    by TCP within ``timeout`` seconds, or None. Name lookup included (in a thread: it has no timeout of its own),
    so an offline machine is told in seconds instead of after the hub client's retry loop."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    url = urlparse(proxy if proxy and not os.environ.get("HF_ENDPOINT") else endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return f"{endpoint} is not a URL"
    outcome: dict[str, Any] = {}

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as e:
            outcome["error"] = e.strerror or str(e) or type(e).__name__

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    if outcome.get("ok"):
        return None
    return f"{host}:{port} cannot be reached ({outcome.get('error', f'no answer within {timeout:.0f}s')})"


def _download_tag(model_name: str, tag: str, model_cfg: dict, timeout: float) -> str:
    """Fetch a tag's weights; fail within ``timeout`` seconds when no byte arrives (no 45-second retry loop)."""
    import open_clip

    fix = (f"cannot load pretrained weights for model '{model_name}' tag '{tag}': not in the local cache and "
           f"{{why}}. Fix: run once with network access to cache them (HF_HUB_OFFLINE unset), or download the "
           f"weights file and pass pretrained='/path/to/open_clip_model.safetensors' (or 'local-dir:/folder')")
    if _offline():
        raise ClipoodError(fix.format(why="HF_HUB_OFFLINE=1 forbids downloads"))
    if (why := hub_unreachable(min(3.0, timeout))) is not None:  # no network: say so now, without retry chatter
        raise ClipoodError(fix.format(why=why))
    result: dict[str, Any] = {}

    def work():
        import logging

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings: the error below says it
        try:
            result["path"] = open_clip.download_pretrained(model_cfg)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
    while thread.is_alive():
        thread.join(0.2)
        if time.monotonic() > deadline:
            # bytes flowing into an .incomplete blob mean the download works: keep waiting for it
            if not any(hub_cache.glob("models--*/blobs/*.incomplete")):
                raise ClipoodError(fix.format(why=f"no download started within {timeout:.0f}s (offline?)"))
    if "error" in result or not result.get("path"):
        err = result.get("error")
        raise ClipoodError(fix.format(why=f"the download failed ({type(err).__name__})"))
    return result["path"]


#: weights files of an open_clip ``local-dir:`` folder, in the order open_clip looks for them
LOCAL_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _resolve_model_name(model_name: str) -> None:
    import open_clip

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise ClipoodError(f"local-dir folder {folder} has no open_clip_config.json; it must hold "
                               f"open_clip_config.json and open_clip_model.safetensors")
        if not any((folder / n).is_file() for n in LOCAL_DIR_WEIGHTS):  # open_clip would use random weights
            raise ClipoodError(f"local-dir folder {folder} holds no weights ({' or '.join(LOCAL_DIR_WEIGHTS)}); "
                               f"copy the weights file into it")
        return
    if model_name.startswith("hf-hub:"):
        return
    if model_name not in open_clip.list_models():
        raise unknown("open_clip model", model_name, open_clip.list_models())


def load_clip(model_name: str, pretrained: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None, download_timeout: float = 8.0) -> Backbone:
    """Load a frozen CLIP.

    Args:
        model_name: any open_clip architecture (``ViT-B-16``, ``RN50``, ...) or a shipped offline config
            (``clipood-tiny``: random weights for tests; ``clipood-mini``: the mini world's pretrained CLIP,
            loaded from the package when ``pretrained`` is None).
        pretrained: None (random weights, except shipped models), an open_clip tag (``openai``,
            ``laion2b_s34b_b88k``, ...), a local ``.safetensors`` / ``.pt`` / ``.bin`` file (``.pt`` is read with
            weights-only loading), or ``local-dir:/folder`` holding ``open_clip_config.json`` +
            ``open_clip_model.safetensors``.
        device, dtype: where the frozen model lives; the caller decides.
        download_timeout: seconds to wait for a download to start before failing with a clear message.
    """
    import open_clip

    register_model_configs()
    model_name = str(model_name)
    _resolve_model_name(model_name)
    kwargs: dict[str, Any] = {}
    identifier = f"{model_name}|random"
    if pretrained is None and model_name in SHIPPED_WEIGHTS:
        pretrained = SHIPPED_WEIGHTS[model_name]
        if not Path(pretrained).is_file():
            raise ClipoodError(f"shipped weights for '{model_name}' are missing at {pretrained}; rebuild them with "
                               f"`python -m clipood.mini.pretrain` or reinstall clipood")
    state_dict = None
    if pretrained is None:
        arg = None
    elif str(pretrained).startswith("local-dir:"):
        folder = Path(str(pretrained)[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise ClipoodError(f"local-dir folder {folder} has no open_clip_config.json; it must hold "
                               f"open_clip_config.json and open_clip_model.safetensors")
        weights = [folder / n for n in LOCAL_DIR_WEIGHTS if (folder / n).is_file()]
        if not weights:  # open_clip would silently build random weights
            raise ClipoodError(f"local-dir folder {folder} holds no weights ({' or '.join(LOCAL_DIR_WEIGHTS)}); "
                               f"copy the weights file into it, or pass the weights file as pretrained=")
        # the weights are loaded into model_name's architecture here, so a mismatch is one clear line
        state_dict = _load_state_dict(weights[0])
        try:
            pp = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8")).get("preprocess_cfg") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ClipoodError(f"{folder / 'open_clip_config.json'} is not valid JSON ({e}); fix or re-export it") from None
        for src, dst in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                         ("resize_mode", "image_resize_mode")):
            if pp.get(src) is not None:
                kwargs[dst] = pp[src]
        arg, identifier = None, f"{model_name}|local-dir:{folder.resolve()}:{_file_fingerprint(weights[0])}"
    elif Path(pretrained).suffix in (".safetensors", ".pt", ".pth", ".bin") or Path(pretrained).exists():
        path = Path(pretrained)
        if not path.is_file():
            raise ClipoodError(f"checkpoint file not found: {path}; pass an existing .safetensors or .pt file "
                               f"or an open_clip pretrained tag")
        state_dict = _load_state_dict(path)
        arg, identifier = None, f"{model_name}|{path.name}:{_file_fingerprint(path)}"
    else:
        tag = str(pretrained)
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if tag not in tags:
            raise unknown(f"pretrained tag for '{model_name}' (or missing file)", tag, tags or ["<none>"])
        cfg = open_clip.get_pretrained_cfg(model_name, tag)
        path = _hf_cached_file(cfg) or _download_tag(model_name, tag, cfg, download_timeout)
        state_dict = _load_state_dict(Path(path))
        arg, identifier = None, f"{model_name}|{tag}"
        kwargs.update(force_quick_gelu=bool(cfg.get("quick_gelu", False)))
        for src, dst in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                         ("resize_mode", "image_resize_mode")):
            if cfg.get(src) is not None:
                kwargs[dst] = cfg[src]
    import logging

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns "No pretrained weights loaded" for random init
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=arg, **kwargs)
    finally:
        logging.getLogger().setLevel(level)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError:
            raise ClipoodError(f"weights in {pretrained} do not fit model '{model_name}': "
                               f"{_mismatch_summary(model.state_dict(), state_dict)} — pass the matching "
                               f"model_name (or the checkpoint saved for this model)") from None
    if pretrained is None:
        # random weights differ per seed: key caches by their content, not only by the architecture name
        h = hashlib.sha256()
        for t in model.state_dict().values():
            h.update(t.detach().cpu().reshape(-1)[:16384].float().numpy().tobytes())
        identifier = f"{model_name}|random:{h.hexdigest()[:16]}"
    dev = torch.device(device)
    dt = dtype or torch.float32
    model = model.to(dev, dt).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return Backbone(model=model, preprocess=preprocess, tokenizer=tokenizer, model_name=model_name,
                    pretrained=None if pretrained is None else str(pretrained), identifier=identifier,
                    device=dev, dtype=dt)
