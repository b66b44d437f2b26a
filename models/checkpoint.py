"""What every model wrapper does with its checkpoint and options, written once.

A checkpoint is a plain dict read with `torch.load(weights_only=True)` (tensors and plain values,
no pickled code): most hold ``{"state_dict", "metadata"}``, some name several state dicts
(hand_joints: ``detector``, ``grader``). Metadata carries at least ``version`` and
``not_for_clinical_use``, which the model card takes over. Each wrapper passes its own error
class, so a bad checkpoint still raises that model's error with the file named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from models.base import GENERIC_VOCABULARY, ModelCard, ReportVocabulary

UNTRAINED_VERSION = "0+untrained"
STATE_AND_METADATA: tuple[str, ...] = ("state_dict", "metadata")


class ModelUnavailable(Exception):
    """A model cannot be built: not installed, weights missing or wrong. The message says which."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(path: Path | None, expected_sha256: str | None) -> None:
    """Refuse weights that are missing or whose SHA-256 differs from the configured value."""
    if path is None:
        return
    if not path.is_file():
        raise ModelUnavailable(f"weights file {path} does not exist")
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise ModelUnavailable(
                f"weights file {path} has SHA-256 {actual[:16]}..., configuration expects {expected_sha256[:16]}..."
            )


def read_checkpoint(
    path: Path, error: type[Exception], kind: str, keys: Sequence[str] = STATE_AND_METADATA,
) -> dict[str, Any]:
    """The checkpoint dict at `path`; `error` when it cannot be read or lacks one of `keys`.

    `kind` names the checkpoint in the message, with its article ("a gout_mtp1 checkpoint").
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise error(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(blob, dict) or not set(keys) <= set(blob):
        raise error(f"{path} is not {kind} ({' + '.join(keys)})")
    return blob


def float_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with floating tensors as float32 (checkpoints may store half precision)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_checkpoint(path: Path, error: type[Exception], kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict as float32, metadata) of a ``{"state_dict", "metadata"}`` checkpoint."""
    blob = read_checkpoint(path, error, kind)
    return float_state(blob["state_dict"]), dict(blob["metadata"])


def untrained_metadata(**extra: Any) -> dict[str, Any]:
    """Metadata of a model built without weights: untrained version, not for clinical use."""
    return {"version": UNTRAINED_VERSION, "not_for_clinical_use": True, **extra}


def apply_torch_threads(options: Mapping[str, Any]) -> None:
    """The ``torch_threads`` option every wrapper takes: pin torch's intra-op threads."""
    if "torch_threads" in options:
        torch.set_num_threads(int(options["torch_threads"]))


def card_from_metadata(
    metadata: Mapping[str, Any], *, id: str, name: str, manufacturer: str, intended_use: str,
    labels: tuple[str, ...], reference: str = "", published: Mapping[str, float] | None = None,
    vocabulary: ReportVocabulary = GENERIC_VOCABULARY,
) -> ModelCard:
    """The model card: fixed facts from the wrapper, version and clinical-use flag from the checkpoint."""
    return ModelCard(
        id=id, version=str(metadata.get("version", UNTRAINED_VERSION)), name=name, manufacturer=manufacturer,
        intended_use=intended_use, labels=labels,
        not_for_clinical_use=bool(metadata.get("not_for_clinical_use", True)),
        reference=reference, published=dict(published or {}), vocabulary=vocabulary)


__all__ = [
    "STATE_AND_METADATA", "UNTRAINED_VERSION", "apply_torch_threads", "card_from_metadata", "float_state",
    "load_checkpoint", "read_checkpoint", "untrained_metadata",
]
