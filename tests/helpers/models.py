"""Test models at the ClinicalModel seam (real computations, no torch): used by the spine's tests.

`BrightnessModel` classifies each image as "bright" or "dark" from its mean intensity relative
to its bit depth, through a logistic curve; results near the middle are flagged uncertain, so
alerts can be exercised. It is deterministic and fast.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset

from models.base import ModelCard
from models.findings import Classification, Findings, ImageRef

CARD = ModelCard(
    id="brightness",
    version="1.0.0",
    name="Brightness test model",
    manufacturer="DICOM AI sidecar tests",
    intended_use="Exercising the sidecar's pipeline in tests. Not a clinical model.",
    labels=("dark", "bright"),
)


@dataclass(frozen=True)
class _Batch:
    means: np.ndarray
    refs: tuple[ImageRef, ...]


class BrightnessModel:
    card = CARD

    def __init__(self, uncertain_band: tuple[float, float] = (0.3, 0.7), version: str = "1.0.0") -> None:
        self.uncertain_band = uncertain_band
        if version != CARD.version:
            self.card = ModelCard(**{**CARD.__dict__, "version": version})
        self.calls = 0
        self.delay_s = 0.0

    def prepare(self, datasets: Sequence[Dataset]) -> _Batch:
        means, refs = [], []
        for ds in datasets:
            arr = ds.pixel_array.astype(np.float64)
            full = float(2 ** int(ds.BitsStored) - 1)
            frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]
            for i, frame in enumerate(frames):
                means.append(frame.mean() / full)
                refs.append(ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                     i + 1 if len(frames) > 1 else None))
        return _Batch(np.asarray(means), tuple(refs))

    def predict(self, batch: _Batch) -> Findings:
        self.calls += 1
        if self.delay_s:  # option `delay_s`: a slow model, so a test can kill its worker mid-job
            time.sleep(self.delay_s)
        p_bright = 1.0 / (1.0 + np.exp(-12.0 * (batch.means - 0.5)))
        lo, hi = self.uncertain_band
        items = tuple(
            Classification(
                label="bright" if p >= 0.5 else "dark",
                probabilities={"bright": float(p), "dark": float(1 - p)},
                source=ref,
                uncertain=bool(lo <= p <= hi),
            )
            for p, ref in zip(p_bright, batch.refs, strict=True)
        )
        mean_p = float(p_bright.mean())
        summary = Classification(label="bright" if mean_p >= 0.5 else "dark",
                                 probabilities={"bright": mean_p, "dark": 1 - mean_p})
        return Findings(CARD.id, self.card.version, classifications=items, summary=summary)


class FailingModel(BrightnessModel):
    """Raises in predict: the worker must fail the job and go on."""

    card = ModelCard(**{**CARD.__dict__, "id": "failing"})

    def predict(self, batch: _Batch) -> Findings:
        raise RuntimeError("model exploded on purpose")


def build_brightness(weights: Path | None = None, options: dict[str, Any] | None = None) -> BrightnessModel:
    opts = options or {}
    model = BrightnessModel(version=str(opts.get("version", "1.0.0")))
    model.delay_s = float(opts.get("delay_s", 0.0))
    return model


def build_failing(weights: Path | None = None, options: dict[str, Any] | None = None) -> FailingModel:
    return FailingModel()


FACTORIES = {"brightness": build_brightness, "failing": build_failing}
