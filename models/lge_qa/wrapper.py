"""The LGE QA model behind the sidecar's model seam: PSIR slices in, per-slice certainty out.

`build(weights, options)` loads a checkpoint written by `train.lge_qa.task` with
`torch.load(weights_only=True)`: ``{"state_dict": ..., "metadata": {...}}`` where metadata holds
version, threshold (chosen on validation), size, spacing_mm, input_size, percentiles, seed and
not_for_clinical_use. Preprocessing is `transforms.slice_to_tensor` with the checkpoint's
settings, the same call training made.

Options: ``threshold`` (float, overrides the checkpoint's), ``torch_threads`` (int),
``size`` (network size when no weights are given; default "b0").

The network forward (slices (N, 1, S, S) -> logits (N,)) is the only part a backend replaces
(`models.backends`): `prepare` and the sigmoid/threshold of `predict` stay here, so in-process
torch, onnxruntime and Triton all see the same tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset

from models import checkpoint
from models.backends import TensorBackend, TensorSignature
from models.backends.base import one_network
from models.backends.inprocess import InProcessTorch
from models.checkpoint import card_from_metadata
from models.findings import Classification, Findings, ImageRef
from models.guard import DomainGuard, guard_verdicts
from models.lge_qa.concepts import VOCABULARY
from models.lge_qa.labels import HIGH_CERTAINTY, LABELS, LOW_CERTAINTY
from models.lge_qa.net import DEFAULT_SIZE, EfficientNetV2
from models.lge_qa.transforms import TransformConfig, n_frames, slice_to_tensor

MODEL_ID = "lge_qa"
NAME = "LGE CMR slice certainty (EfficientNetV2)"
MANUFACTURER = "DICOM AI sidecar project"
INTENDED_USE = (
    "Quality assurance during cardiac MR: flags short-axis PSIR late gadolinium enhancement "
    "slices an expert reader would be uncertain about (faint or equivocal enhancement, poor "
    "myocardial nulling, artefacts, low SNR), so the technologist can repeat the slice, adjust "
    "TI, swap phase encoding or add a cross-cut while the patient is still in the scanner. "
    "It does not diagnose LGE and does not replace the reader."
)
REFERENCE = (
    "EfficientNetV2 classifier of short-axis PSIR LGE slices as high vs low certainty, labels "
    "from two blinded experts' VAS scores (0-100), 70/15/15 split (seed study of issue 4)."
)
PUBLISHED: dict[str, float] = {
    "accuracy": 0.94,
    "auc": 0.94,
    "recall": 0.80,
    "precision": 0.97,
    "f1": 0.87,
    "external_accuracy": 0.91,
    "external_auc": 0.91,
    "inter_expert_accuracy": 0.86,
}
FINDING_SITE = "left ventricle"
#: tensor names of the network forward, in exported ONNX files and Triton model configurations
INPUT_NAME = "slices"
OUTPUT_NAME = "logits"


class LgeQaError(ValueError):
    """A checkpoint or a slice this model cannot use; the message says which and why."""


@dataclass(frozen=True)
class LgeQaBatch:
    """Prepared slices: the network input (N, 1, H, W) and one source reference per slice."""

    tensor: torch.Tensor
    refs: tuple[ImageRef, ...]


def _refs_and_tensors(ds: Dataset, config: TransformConfig) -> tuple[list[ImageRef], list[np.ndarray]]:
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    sop_uid = str(getattr(ds, "SOPInstanceUID", ""))
    frames = n_frames(ds)
    if frames == 1:
        return [ImageRef(sop_class, sop_uid)], [slice_to_tensor(ds, None, config)]
    refs = [ImageRef(sop_class, sop_uid, frame=i + 1) for i in range(frames)]
    return refs, [slice_to_tensor(ds, i, config) for i in range(frames)]


def _two_floats(value: object) -> tuple[float, float]:
    """A (low, high) pair from the checkpoint's metadata (untyped JSON)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"percentiles must be two numbers, not {value!r}")
    return float(value[0]), float(value[1])


class LgeQaModel:
    """EfficientNetV2 LGE slice-certainty model; `predict` answers per slice and for the batch."""

    def __init__(
        self,
        net: EfficientNetV2,
        metadata: Mapping[str, Any],
        threshold: float,
    ) -> None:
        self.net = net.eval()
        self.metadata = dict(metadata)
        self.guard = DomainGuard.from_metadata(metadata)
        self.threshold = float(threshold)
        # temperature scaling fitted by `python -m train lge_qa calibrate` (1: the network's own)
        self.temperature = float(metadata.get("temperature", 1.0))
        self.config = TransformConfig(
            spacing_mm=float(metadata.get("spacing_mm", TransformConfig.spacing_mm)),
            size=int(metadata.get("input_size", TransformConfig.size)),
            percentiles=_two_floats(metadata.get("percentiles", TransformConfig.percentiles)),
        )
        self.card = card_from_metadata(
            metadata, id=MODEL_ID, name=NAME, manufacturer=MANUFACTURER, intended_use=INTENDED_USE,
            labels=LABELS, reference=REFERENCE, published=PUBLISHED, vocabulary=VOCABULARY,
        )
        self.backend: TensorBackend = InProcessTorch(self.net, self.tensor_signature())

    def prepare(self, datasets: Sequence[Dataset]) -> LgeQaBatch:
        """Single-frame slices and multi-frame Enhanced MR (one ref per frame) -> one batch."""
        refs: list[ImageRef] = []
        tensors: list[np.ndarray] = []
        for ds in datasets:
            r, t = _refs_and_tensors(ds, self.config)
            refs.extend(r)
            tensors.extend(t)
        if not tensors:
            raise LgeQaError("no slices to prepare")
        return LgeQaBatch(torch.from_numpy(np.stack(tensors)), tuple(refs))

    def guard_inputs(self, batch: LgeQaBatch) -> tuple[list[np.ndarray], list[ImageRef]]:
        """The prepared inputs the domain guard checks (what the network sees), with their sources."""
        return list(batch.tensor.numpy()), list(batch.refs)

    def tensor_signature(self) -> TensorSignature:
        """The forward's input (1, S, S) and output (a scalar logit) per slice, and the card version."""
        size = self.config.size
        return TensorSignature(MODEL_ID, self.card.version, INPUT_NAME, (1, size, size), OUTPUT_NAME, ())

    def tensor_signatures(self) -> tuple[TensorSignature, ...]:
        """The one network's signature (the seam's `SwappableForward`)."""
        return (self.tensor_signature(),)

    def use_backend(self, backend: TensorBackend, network: str = "") -> None:
        """Run every later forward on `backend` (onnxruntime, Triton) instead of `self.net`."""
        one_network(MODEL_ID, network)
        self.backend = backend

    def logits(self, batch: LgeQaBatch) -> np.ndarray:
        """The network forward on the configured backend: (N,) float32 low-certainty log-odds."""
        return self.backend.run(batch.tensor.numpy())

    def probabilities(self, batch: LgeQaBatch) -> np.ndarray:
        """P(low certainty) per slice (temperature-scaled when the checkpoint was calibrated)."""
        return torch.sigmoid(torch.from_numpy(self.logits(batch)).double() / self.temperature).numpy()

    def predict(self, batch: LgeQaBatch) -> Findings:
        """One Classification per slice (uncertain = p_low >= threshold) plus a batch summary."""
        p_low = self.probabilities(batch)
        items = []
        for ref, p in zip(batch.refs, p_low, strict=True):
            low = bool(p >= self.threshold)
            items.append(
                Classification(
                    label=LOW_CERTAINTY if low else HIGH_CERTAINTY,
                    probabilities={HIGH_CERTAINTY: float(1.0 - p), LOW_CERTAINTY: float(p)},
                    source=ref,
                    uncertain=low,
                    finding_site=FINDING_SITE,
                )
            )
        n_low = sum(c.uncertain for c in items)
        worst = float(p_low.max())
        summary = Classification(
            label=LOW_CERTAINTY if n_low else HIGH_CERTAINTY,
            probabilities={HIGH_CERTAINTY: 1.0 - worst, LOW_CERTAINTY: worst},
            source=None,
            uncertain=n_low > 0,
            finding_site=FINDING_SITE,
        )
        return Findings(
            model_id=MODEL_ID,
            model_version=self.card.version,
            classifications=tuple(items),
            summary=summary,
            not_for_clinical_use=self.card.not_for_clinical_use,
            notes=(
                f"{n_low} of {len(items)} slices low certainty (threshold {self.threshold:.3f}); "
                "summary probability is the highest slice probability",
            ),
            domain=guard_verdicts(self.guard, *self.guard_inputs(batch)),
        )

    def warm_up(self) -> None:
        """One forward pass on zeros, so the first real slice does not pay for allocation."""
        size = self.config.size
        self.backend.run(np.zeros((1, 1, size, size), dtype=np.float32))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) from a checkpoint file; tensors only, no pickled code."""
    return checkpoint.load_checkpoint(path, LgeQaError, "an lge_qa checkpoint")


def build(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> LgeQaModel:
    """The factory the registry calls: load `weights` (or an untrained net) and apply `options`."""
    opts = dict(options or {})
    checkpoint.apply_torch_threads(opts)
    if weights is not None:
        state, metadata = load_checkpoint(Path(weights))
        net = EfficientNetV2(str(metadata.get("size", DEFAULT_SIZE)))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise LgeQaError(f"{weights}: weights do not fit size {metadata.get('size')!r}") from exc
    else:
        metadata = checkpoint.untrained_metadata(threshold=0.5, size=str(opts.get("size", DEFAULT_SIZE)))
        net = EfficientNetV2(metadata["size"])
    threshold = float(opts.get("threshold", metadata.get("threshold", 0.5)))
    if not 0.0 < threshold < 1.0:
        raise LgeQaError(f"threshold {threshold} must lie in (0, 1)")
    return LgeQaModel(net, metadata, threshold)
