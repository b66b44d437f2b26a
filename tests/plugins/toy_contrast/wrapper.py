"""The toy contrast model: "flat" when an image's pixel spread is small, flagged for the technologist.

No weights and no network: `prepare` takes each image's relative spread, `predict` thresholds it.
Everything the writers say about it comes from its card (concepts.py), nothing from sidecar/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset

from models.base import ModelCard
from models.findings import Classification, Findings, ImageRef
from tests.plugins.toy_contrast.concepts import VOCABULARY

MODEL_ID = "toy_contrast"
LABELS = ("flat", "contrasty")


@dataclass(frozen=True)
class ContrastBatch:
    refs: tuple[ImageRef, ...]
    spread: tuple[float, ...]  # standard deviation / (max - min + 1), in [0, 1)


class ToyContrastModel:
    """A ClinicalModel (models/base.py) with a card carrying its own vocabulary."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.card = ModelCard(
            id=MODEL_ID, version="0.0.1-toy", name="Toy contrast check", manufacturer="Plug-in test",
            intended_use="test only", labels=LABELS, vocabulary=VOCABULARY,
        )

    def prepare(self, datasets: Sequence[Dataset]) -> ContrastBatch:
        spreads = []
        for ds in datasets:
            px = ds.pixel_array.astype(float)
            spreads.append(float(px.std() / (px.max() - px.min() + 1.0)))
        return ContrastBatch(tuple(ImageRef(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in datasets),
                             tuple(spreads))

    def predict(self, batch: ContrastBatch) -> Findings:
        items = []
        for ref, spread in zip(batch.refs, batch.spread, strict=True):
            p_flat = float(np.clip(1.0 - spread / self.threshold / 2.0, 0.0, 1.0))
            flat = p_flat >= 0.5
            items.append(Classification("flat" if flat else "contrasty", {"flat": p_flat, "contrasty": 1.0 - p_flat},
                                        source=ref, uncertain=flat))
        return Findings(MODEL_ID, self.card.version, classifications=tuple(items), not_for_clinical_use=True)


def build(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> ToyContrastModel:
    """The factory conf/models.yaml names: `factory: tests.plugins.toy_contrast.wrapper:build`."""
    return ToyContrastModel(float((options or {}).get("threshold", 0.5)))
