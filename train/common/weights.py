"""Serving checkpoints: what training writes for `models/<name>/wrapper.py` to load.

A serving checkpoint is a plain dict of state dicts and a ``metadata`` dict (loadable with
`torch.load(weights_only=True)`, see `models.checkpoint`); its SHA-256 goes into
conf/models.yaml and the model card. The trainer's own resumable checkpoints (`last.pt`,
`best.pt`) are `train.common.trainer`'s business, not this module's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def serving_state(module: nn.Module, *, half: bool = False) -> dict[str, torch.Tensor]:
    """A detached, contiguous copy of `module`'s state dict; floating tensors as float16 when `half`
    (halves the file; the wrappers load them back as float32)."""
    state = {}
    for k, v in module.state_dict().items():
        t = v.detach()
        if half and t.is_floating_point():
            t = t.half()
        state[k] = t.clone().contiguous()
    return state


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_serving_checkpoint(blob: Mapping[str, Any], path: Path) -> str:
    """`torch.save` the dict to `path` (folders made as needed); returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(blob), path)
    return sha256_of(path)


def save_state_and_metadata(module: nn.Module, metadata: Mapping[str, Any], path: Path, *, half: bool = False) -> str:
    """The usual serving checkpoint ``{"state_dict", "metadata"}``; returns its SHA-256."""
    return save_serving_checkpoint({"state_dict": serving_state(module, half=half), "metadata": metadata}, path)


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata`` dict of a serving checkpoint (empty when it has none)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return dict(blob.get("metadata", {})) if isinstance(blob, dict) else {}


__all__ = ["checkpoint_metadata", "save_serving_checkpoint", "save_state_and_metadata", "serving_state", "sha256_of"]
