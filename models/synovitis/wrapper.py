"""The four synovitis variants behind the sidecar's model seam (one code path).

`build_sgs`, `build_dgs`, `build_spd`, `build_dpd` are the registry's factories for model ids
"synovitis_sgs", "synovitis_dgs", "synovitis_spd", "synovitis_dpd". Each loads a checkpoint
written by `train.synovitis.task` with `torch.load(weights_only=True)`: ``{"state_dict": ...,
"metadata": {...}}`` (model_id, variant, version, size, input_size, frames, ...). A checkpoint of
another variant is refused. Preprocessing is `transforms.to_input`, the call training makes.

Output per image: a Classification with the EULAR-OMERACT combined grade (labels grade_0 ..
grade_3), the four probabilities, the joint and laterality the headers give; the series summary
is the highest grade seen. Options: ``torch_threads`` (int), ``size`` (net size without weights).

The network forward (stills (N, C, S, S) or cines (N, T, C, S, S) -> logits (N, 4)) is the only
part a backend replaces (`models.backends`); preprocessing and the softmax stay here. The demo
weights are stored in float16 and widened to float32 when loaded, so every backend takes and
gives float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset

from models.backends import TensorBackend, TensorSignature
from models.backends.base import one_network
from models.backends.inprocess import InProcessTorch
from models.checkpoint import apply_torch_threads, card_from_metadata, load_checkpoint, untrained_metadata
from models.findings import Classification, Findings, ImageRef
from models.guard import DomainGuard, guard_verdicts
from models.synovitis.concepts import VOCABULARY
from models.synovitis.net import N_GRADES, SynovitisNet
from models.synovitis.transforms import VARIANTS, SynovitisTransform, joint_site, to_input
from models.us.headers import laterality

LABELS: tuple[str, ...] = ("grade_0", "grade_1", "grade_2", "grade_3")
MANUFACTURER = "DICOM AI sidecar project"
REFERENCE = (
    "ResNet classifiers of joint ultrasound grading synovitis with the EULAR-OMERACT combined "
    "score (0-3, two expert readers): static/dynamic greyscale and power Doppler variants "
    "(seed study 1 of issue 5)."
)
#: the study's per-grade AUCs of the best variant per grade, and ICC range with radiologists
PUBLISHED: dict[str, dict[str, float]] = {
    "sgs": {"auc.grade_1": 0.95, "auc.grade_0.cohort1": 0.66, "auc.grade_2.cohort1": 0.66,
            "auc.grade_3.cohort1": 0.75, "auc.grade_0.cohort2": 0.81},
    "dgs": {"auc.grade_2": 0.74},
    "spd": {"auc.grade_3": 0.95, "auc.grade_0.cohort1": 0.82, "auc.grade_2.cohort1": 0.67,
            "auc.grade_3.cohort1": 0.95, "auc.grade_0.cohort2": 0.89},
    "dpd": {"auc.grade_0": 0.87},
}
PUBLISHED_ICC_RANGE = (0.239, 0.756)
#: tensor names of the network forward, in exported ONNX files and Triton model configurations
STILL_INPUT, CINE_INPUT, OUTPUT_NAME = "images", "cines", "logits"


def model_id(variant: str) -> str:
    return f"synovitis_{variant}"


def intended_use(variant: str) -> str:
    spec = VARIANTS[variant]
    return (
        f"Grades synovitis of a hand, wrist, knee or foot joint in rheumatoid arthritis on "
        f"{spec.name} ultrasound ({spec.code}) with the EULAR-OMERACT combined score 0-3, as a "
        "second reader beside the sonographer's own grading. It does not diagnose rheumatoid "
        "arthritis and does not replace the reader."
    )


class SynovitisError(ValueError):
    """A checkpoint or an image this model cannot use; the message says which and why."""


@dataclass(frozen=True)
class SynovitisBatch:
    """Prepared inputs: (N, C, S, S) stills or (N, T, C, S, S) cines, with the source facts."""

    tensor: torch.Tensor
    refs: tuple[ImageRef, ...]
    sites: tuple[str, ...]
    lateralities: tuple[str | None, ...]


class SynovitisModel:
    """One variant; `predict` grades each image and summarises the series."""

    def __init__(self, variant: str, net: SynovitisNet, metadata: Mapping[str, Any]) -> None:
        if variant not in VARIANTS:
            raise SynovitisError(f"unknown variant {variant!r}")
        self.variant, self.spec = variant, VARIANTS[variant]
        self.net = net.eval()
        self.metadata = dict(metadata)
        self.guard = DomainGuard.from_metadata(metadata)
        self.config = SynovitisTransform(size=int(metadata.get("input_size", 128)),
                                         frames=int(metadata.get("frames", 8)))
        self.card = card_from_metadata(
            metadata, id=model_id(variant), name=f"RA synovitis grade, {self.spec.name} ({self.spec.code}, ResNet)",
            manufacturer=MANUFACTURER, intended_use=intended_use(variant), labels=LABELS,
            reference=REFERENCE, published=PUBLISHED[variant], vocabulary=VOCABULARY)
        self.backend: TensorBackend = InProcessTorch(self.net, self.tensor_signature())

    def prepare(self, datasets: Sequence[Dataset]) -> SynovitisBatch:
        """Each instance (still or cine) -> one input of this variant."""
        if not datasets:
            raise SynovitisError("no images to prepare")
        inputs = [to_input(ds, self.variant, self.config) for ds in datasets]
        refs = tuple(ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets)
        return SynovitisBatch(torch.from_numpy(np.stack(inputs)), refs,
                              tuple(joint_site(ds) for ds in datasets),
                              tuple(laterality(ds) for ds in datasets))

    def guard_inputs(self, batch: SynovitisBatch) -> tuple[list[np.ndarray], list[ImageRef]]:
        """The prepared inputs the domain guard checks (what the network sees), with their sources."""
        return list(batch.tensor.numpy()), list(batch.refs)

    def input_shape(self) -> tuple[int, ...]:
        """One input of this variant: (C, S, S) for a still, (T, C, S, S) for a cine."""
        s, c = self.config.size, self.spec.channels
        return (self.config.frames, c, s, s) if self.spec.cine else (c, s, s)

    def tensor_signature(self) -> TensorSignature:
        """The forward's input per image or cine and its output (4 grade logits), and the card version."""
        return TensorSignature(self.card.id, self.card.version, CINE_INPUT if self.spec.cine else STILL_INPUT,
                               self.input_shape(), OUTPUT_NAME, (N_GRADES,))

    def tensor_signatures(self) -> tuple[TensorSignature, ...]:
        """The one network's signature (the seam's `SwappableForward`)."""
        return (self.tensor_signature(),)

    def use_backend(self, backend: TensorBackend, network: str = "") -> None:
        """Run every later forward on `backend` (onnxruntime, Triton) instead of `self.net`."""
        one_network(self.card.id, network)
        self.backend = backend

    def logits(self, batch: SynovitisBatch) -> np.ndarray:
        """The network forward on the configured backend: (N, 4) float32 grade logits."""
        return self.backend.run(batch.tensor.numpy())

    def probabilities(self, batch: SynovitisBatch) -> np.ndarray:
        """(N, 4) grade probabilities."""
        return torch.softmax(torch.from_numpy(self.logits(batch)), dim=1).double().numpy()

    def predict(self, batch: SynovitisBatch) -> Findings:
        p = self.probabilities(batch)
        items = []
        for ref, probs, site, lat in zip(batch.refs, p, batch.sites, batch.lateralities, strict=True):
            probs = probs / probs.sum()
            items.append(Classification(
                label=LABELS[int(np.argmax(probs))],
                probabilities={name: float(np.clip(v, 0.0, 1.0)) for name, v in zip(LABELS, probs, strict=True)},
                source=ref, finding_site=site, laterality=lat))
        worst = max(range(len(items)), key=lambda i: (int(np.argmax(p[i])), float(p[i].max())))
        summary = Classification(label=items[worst].label, probabilities=dict(items[worst].probabilities),
                                 finding_site=items[worst].finding_site, laterality=items[worst].laterality)
        return Findings(
            model_id=self.card.id, model_version=self.card.version, classifications=tuple(items),
            summary=summary, not_for_clinical_use=self.card.not_for_clinical_use,
            notes=(f"variant {self.spec.code} ({self.spec.name}); EULAR-OMERACT combined grade 0-3; "
                   "series summary is the highest-graded image",),
            domain=guard_verdicts(self.guard, *self.guard_inputs(batch)))

    def warm_up(self) -> None:
        """One forward pass on zeros of the input shape."""
        self.backend.run(np.zeros((1, *self.input_shape()), dtype=np.float32))


def build(variant: str, weights: Path | None = None, options: Mapping[str, Any] | None = None) -> SynovitisModel:
    """Load `weights` of `variant` (or an untrained net) and apply `options`."""
    if variant not in VARIANTS:
        raise SynovitisError(f"unknown variant {variant!r}")
    opts = dict(options or {})
    apply_torch_threads(opts)
    spec = VARIANTS[variant]
    if weights is not None:
        state, metadata = load_checkpoint(Path(weights), SynovitisError, "a synovitis checkpoint")
        if metadata.get("variant") != variant:
            raise SynovitisError(f"{weights} holds variant {metadata.get('variant')!r}, not {variant!r}")
        net = SynovitisNet(spec.channels, spec.cine, str(metadata.get("size", "demo")))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise SynovitisError(f"{weights}: weights do not fit size {metadata.get('size')!r}") from exc
    else:
        metadata = untrained_metadata(variant=variant, size=str(opts.get("size", "demo")))
        net = SynovitisNet(spec.channels, spec.cine, metadata["size"])
    return SynovitisModel(variant, net, metadata)


def build_sgs(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> SynovitisModel:
    """Factory of "synovitis_sgs"."""
    return build("sgs", weights, options)


def build_dgs(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> SynovitisModel:
    """Factory of "synovitis_dgs"."""
    return build("dgs", weights, options)


def build_spd(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> SynovitisModel:
    """Factory of "synovitis_spd"."""
    return build("spd", weights, options)


def build_dpd(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> SynovitisModel:
    """Factory of "synovitis_dpd"."""
    return build("dpd", weights, options)
