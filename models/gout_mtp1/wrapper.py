"""The gout MTP1 model behind the sidecar's model seam: one ResNet-50 across views.

`build(weights, options)` loads a checkpoint written by `train.gout_mtp1.task`
(``{"state_dict", "metadata"}``, `torch.load(weights_only=True)`); metadata holds version,
threshold (chosen on validation, Youden), size and input_size. Output per image: "abnormal" or
"normal" at the threshold with P(abnormal), the site (first metatarsophalangeal joint), the
laterality and the view the headers give ("unknown" otherwise, in the notes). The series
summary is the image with the highest P(abnormal).
Options: ``threshold`` (overrides the checkpoint's), ``torch_threads``, ``size`` (without weights).

The network forward (images (N, 1, S, S) -> logits (N,)) is the only part a backend replaces
(`models.backends`); preprocessing and the sigmoid/threshold stay here. The demo weights are
stored in float16 and widened to float32 when loaded, so every backend takes and gives float32.
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
from models.gout_mtp1.concepts import VOCABULARY
from models.gout_mtp1.net import GoutNet
from models.gout_mtp1.transforms import GoutTransform, to_input, view_of
from models.guard import DomainGuard, guard_verdicts
from models.us.headers import laterality

MODEL_ID = "gout_mtp1"
NORMAL, ABNORMAL = "normal", "abnormal"
LABELS: tuple[str, str] = (NORMAL, ABNORMAL)
NAME = "Gout MTP1 ultrasound screening (ResNet-50, all views)"
MANUFACTURER = "DICOM AI sidecar project"
FINDING_SITE = "first metatarsophalangeal joint"
INTENDED_USE = (
    "Flags first metatarsophalangeal joint ultrasound images (dorsal, medial or plantar view) "
    "that show signs of gout (double contour sign, aggregates, tophus, erosion, effusion) for "
    "the reader's attention. It does not diagnose gout and does not replace the reader."
)
REFERENCE = (
    "ResNet-50 separating abnormal from normal MTP1 ultrasound across dorsal, medial and plantar "
    "views; a single model matched per-view models (seed study 2 of issue 5)."
)
PUBLISHED: dict[str, float] = {
    "auc": 0.92, "accuracy": 0.8595, "sensitivity": 0.8360, "specificity": 0.8836,
    "per_view_auc": 0.92, "per_view_accuracy": 0.8657, "per_view_sensitivity": 0.8237,
    "per_view_specificity": 0.9086, "delong_p_single_vs_per_view": 0.62,
}
#: tensor names of the network forward, in exported ONNX files and Triton model configurations
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class GoutError(ValueError):
    """A checkpoint or an image this model cannot use; the message says which and why."""


@dataclass(frozen=True)
class GoutBatch:
    """(N, 1, S, S) inputs and per-image references, views and lateralities."""

    tensor: torch.Tensor
    refs: tuple[ImageRef, ...]
    views: tuple[str, ...]
    lateralities: tuple[str | None, ...]


class GoutModel:
    """Single model across views; `predict` answers per image and for the series."""

    def __init__(self, net: GoutNet, metadata: Mapping[str, Any], threshold: float) -> None:
        self.net = net.eval()
        self.metadata = dict(metadata)
        self.guard = DomainGuard.from_metadata(metadata)
        self.threshold = float(threshold)
        # temperature scaling fitted by `python -m train gout_mtp1 calibrate` (1: the network's own)
        self.temperature = float(metadata.get("temperature", 1.0))
        self.config = GoutTransform(size=int(metadata.get("input_size", 128)))
        self.card = card_from_metadata(
            metadata, id=MODEL_ID, name=NAME, manufacturer=MANUFACTURER, intended_use=INTENDED_USE,
            labels=LABELS, reference=REFERENCE, published=PUBLISHED, vocabulary=VOCABULARY)
        self.backend: TensorBackend = InProcessTorch(self.net, self.tensor_signature())

    def prepare(self, datasets: Sequence[Dataset]) -> GoutBatch:
        if not datasets:
            raise GoutError("no images to prepare")
        x = np.stack([to_input(ds, self.config) for ds in datasets])
        return GoutBatch(torch.from_numpy(x),
                         tuple(ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets),
                         tuple(view_of(ds) for ds in datasets), tuple(laterality(ds) for ds in datasets))

    def guard_inputs(self, batch: GoutBatch) -> tuple[list[np.ndarray], list[ImageRef]]:
        """The prepared inputs the domain guard checks (what the network sees), with their sources."""
        return list(batch.tensor.numpy()), list(batch.refs)

    def tensor_signature(self) -> TensorSignature:
        """The forward's input (1, S, S) and output (a scalar logit) per image, and the card version."""
        size = self.config.size
        return TensorSignature(MODEL_ID, self.card.version, INPUT_NAME, (1, size, size), OUTPUT_NAME, ())

    def tensor_signatures(self) -> tuple[TensorSignature, ...]:
        """The one network's signature (the seam's `SwappableForward`)."""
        return (self.tensor_signature(),)

    def use_backend(self, backend: TensorBackend, network: str = "") -> None:
        """Run every later forward on `backend` (onnxruntime, Triton) instead of `self.net`."""
        one_network(MODEL_ID, network)
        self.backend = backend

    def logits(self, batch: GoutBatch) -> np.ndarray:
        """The network forward on the configured backend: (N,) float32 log-odds of abnormal."""
        return self.backend.run(batch.tensor.numpy())

    def probabilities(self, batch: GoutBatch) -> np.ndarray:
        """P(abnormal) per image (temperature-scaled when the checkpoint was calibrated)."""
        return torch.sigmoid(torch.from_numpy(self.logits(batch)).double() / self.temperature).numpy()

    def _classify(self, p: float, ref: ImageRef | None, lat: str | None) -> Classification:
        return Classification(label=ABNORMAL if p >= self.threshold else NORMAL,
                              probabilities={NORMAL: float(1.0 - p), ABNORMAL: float(p)},
                              source=ref, finding_site=FINDING_SITE, laterality=lat)

    def predict(self, batch: GoutBatch) -> Findings:
        p = np.clip(self.probabilities(batch), 0.0, 1.0)
        items = tuple(self._classify(float(pi), ref, lat)
                      for pi, ref, lat in zip(p, batch.refs, batch.lateralities, strict=True))
        worst = int(np.argmax(p))
        summary = self._classify(float(p[worst]), None, batch.lateralities[worst])
        views = ", ".join(f"image {i + 1}: {v}" for i, v in enumerate(batch.views))
        return Findings(
            model_id=MODEL_ID, model_version=self.card.version, classifications=items, summary=summary,
            not_for_clinical_use=self.card.not_for_clinical_use,
            notes=(f"views: {views}", f"abnormal when P >= {self.threshold:.3f}; single model across views"),
            domain=guard_verdicts(self.guard, *self.guard_inputs(batch)))

    def warm_up(self) -> None:
        """One forward pass on zeros, so the first image does not pay for allocation."""
        self.backend.run(np.zeros((1, 1, self.config.size, self.config.size), dtype=np.float32))


def build(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> GoutModel:
    """The factory the registry calls."""
    opts = dict(options or {})
    apply_torch_threads(opts)
    if weights is not None:
        state, metadata = load_checkpoint(Path(weights), GoutError, "a gout_mtp1 checkpoint")
        net = GoutNet(str(metadata.get("size", "resnet50_quarter")))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise GoutError(f"{weights}: weights do not fit size {metadata.get('size')!r}") from exc
    else:
        metadata = untrained_metadata(threshold=0.5, size=str(opts.get("size", "resnet50_quarter")))
        net = GoutNet(metadata["size"])
    threshold = float(opts.get("threshold", metadata.get("threshold", 0.5)))
    if not 0.0 < threshold < 1.0:
        raise GoutError(f"threshold {threshold} must lie in (0, 1)")
    return GoutModel(net, metadata, threshold)
