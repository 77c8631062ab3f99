"""Saving and loading: atomic writes, self-describing safetensors weights, safe training state.

- Model weights: ``NAME.safetensors`` whose header holds the model spec and class names (so a
  weights file loads without any config), plus ``NAME.json``, the same metadata for people.
- Training state (optimizer, scheduler, RNG, ...): ``torch.save``, read back with
  ``weights_only=True`` only; never full unpickling.
- Every write is atomic (:mod:`kaseg.core.files`): a crash mid-write leaves the previous file intact.
  Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..core.errors import KasegError
from ..core.files import atomic_write_bytes, atomic_write_text
from .models import SegModel, build_from_spec

BEST, LAST, STATE = "best", "last", "checkpoint.pt"


def save_weights(module: torch.nn.Module, path: str | Path, meta: dict) -> Path:
    """Write ``path`` (.safetensors, ``meta`` in its header) and a .json sidecar with ``meta``."""
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, st_save(state, metadata={"kaseg": json.dumps(meta)}))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path


def save_model(model: SegModel, path: str | Path, extra: dict | None = None) -> Path:
    """A segmentation model's weights with its spec; ``extra``: class names, palette, ..."""
    return save_weights(model, path, {"kind": "segmentation", "spec": model.spec.to_dict(),
                                      **(extra or {})})


def resolve_weights(path: str | Path, which: str = BEST) -> Path:
    """A run folder, a .safetensors file, or its .json -> the weights file."""
    path = Path(path)
    if path.is_dir():
        for name in (which, LAST):
            if (path / f"{name}.safetensors").is_file():
                return path / f"{name}.safetensors"
        raise KasegError(f"{path}: no {which}.safetensors or {LAST}.safetensors in this run folder")
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise KasegError(f"{path}: checkpoint not found")
    return path


def read_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) of a kaseg .safetensors file, or a one-line error."""
    try:
        raw = path.read_bytes()
        state = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, OSError) as e:
        raise KasegError(f"{path}: not a safetensors checkpoint ({e})") from None
    meta = header.get("__metadata__", {}).get("kaseg")
    if meta is None:
        raise KasegError(f"{path}: safetensors file without kaseg metadata (no model spec)")
    return state, json.loads(meta)


def is_kaseg_weights(path: Path) -> bool:
    """Whether a .safetensors file carries kaseg's metadata (a model spec kaseg can rebuild)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return True  # let read_weights give its one-line error
    return "kaseg" in header.get("__metadata__", {})


def load_state_strict(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    """Load with a one-line error listing the first mismatching keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        raise KasegError(f"{source}: does not match the model architecture: {'; '.join(parts)}")
    model.load_state_dict(state)


def read_foreign_state(path: str | Path) -> dict:
    """The state dict of a checkpoint kaseg did not write: a ``.pt``/``.pth``/``.bin`` file
    (``torch.save`` of a state dict, or of ``{"state_dict": ...}`` / ``{"model": ...}``) or a
    plain ``.safetensors``; a ``module.`` prefix (DDP) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise KasegError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            state = st_load(path.read_bytes())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals, truncated files, not-a-checkpoint
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KasegError(f"{path}: not a readable weights file ({msg[:200]})") from None
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KasegError(f"{path}: holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights_into(module: torch.nn.Module, path: str | Path) -> None:
    """A user's own checkpoint into ``module``, every key checked: a missing, unexpected or
    misshapen key is a one-line error naming it, never a silent partial load."""
    load_state_strict(module, read_foreign_state(path), path)


def load_model(path: str | Path, which: str = BEST, device: str | torch.device = "cpu"):
    """Rebuild a model from its weights file alone -> ``(model in eval mode, metadata)``."""
    path = resolve_weights(path, which)
    state, meta = read_weights(path)
    if "spec" not in meta:
        raise KasegError(f"{path}: is a {meta.get('kind', 'non-model')} checkpoint, not a "
                         f"segmentation model")
    if meta["spec"].get("name", "").startswith("custom:"):
        raise KasegError(f"{path}: weights of a custom module ({meta['spec']['name'][7:]}), which "
                         "kaseg cannot rebuild by name; build the module, wrap it in "
                         "kaseg.nets.external.TappedModel and call load_weights_into(model, path)")
    model = build_from_spec(meta["spec"])
    load_state_strict(model, state, path)
    return model.to(device).eval(), meta


def save_state(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals, truncated zips, not-a-checkpoint
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KasegError(f"{path}: not a readable kaseg training checkpoint ({msg[:200]})") from None
