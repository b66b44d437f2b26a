"""Findings: the only contract between a clinical model and the result writers.

A model turns a batch into one `Findings`. Writers (SR, SC, GSPS, alerts) read only these types;
they never look at tensors or at the model. Everything is frozen so a stage cannot change what
another stage already handed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageRef:
    """A source image (or one frame of it) a finding is about."""

    sop_class_uid: str
    sop_instance_uid: str
    frame: int | None = None  # 1-based frame number of a multi-frame image


@dataclass(frozen=True)
class Classification:
    """A categorical result for one image (or a whole series when `source` is None).

    `label` is the winning class, one of the model card's labels. `probabilities` holds one
    probability per card label. `uncertain` flags a result a technologist should act on
    (e.g. a low-certainty LGE slice); it is what the alert channel listens to.
    """

    label: str
    probabilities: Mapping[str, float]
    source: ImageRef | None = None
    uncertain: bool = False
    finding_site: str | None = None  # e.g. "MTP1 joint", "left ventricle"; coded by the writer
    laterality: str | None = None  # "L" or "R" where it applies

    def __post_init__(self) -> None:
        if self.label not in self.probabilities:
            raise ValueError(f"label {self.label!r} has no probability")
        for name, p in self.probabilities.items():
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"probability of {name!r} is {p}, outside [0, 1]")


@dataclass(frozen=True)
class Measurement:
    """A numeric result with its UCUM unit (e.g. "1" for a ratio, "mm" for a distance)."""

    name: str
    value: float
    unit: str
    source: ImageRef | None = None


@dataclass(frozen=True)
class Detection:
    """Something found at a place in an image: a joint, a lesion.

    `box` is (column_min, row_min, column_max, row_max) in pixel coordinates of the source
    image (0-based, as DICOM SCOORD uses), after any mirroring has been undone.
    """

    label: str
    box: tuple[float, float, float, float]
    confidence: float
    source: ImageRef
    laterality: str | None = None
    grade: Classification | None = None

    def __post_init__(self) -> None:
        c0, r0, c1, r1 = self.box
        if not (c1 > c0 and r1 > r0):
            raise ValueError(f"box {self.box} is empty or inverted")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} outside [0, 1]")


@dataclass(frozen=True)
class GeneratedImage:
    """An image the model made (e.g. virtual elastography), for a Secondary Capture or derived image.

    `pixels` is uint8, (rows, columns) for MONOCHROME2 or (rows, columns, 3) for RGB.
    """

    pixels: np.ndarray
    description: str
    source: ImageRef
    photometric: str = "MONOCHROME2"

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.uint8:
            raise ValueError("generated pixels must be uint8")
        expected = 3 if self.photometric == "RGB" else 2
        if self.pixels.ndim != expected:
            raise ValueError(f"{self.photometric} image needs {expected} dimensions")


@dataclass(frozen=True)
class Findings:
    """Everything one model said about one job (one instance, or one series)."""

    model_id: str
    model_version: str
    classifications: tuple[Classification, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    detections: tuple[Detection, ...] = ()
    images: tuple[GeneratedImage, ...] = ()
    summary: Classification | None = None  # per-series result, when the model gives one
    not_for_clinical_use: bool = True  # demo weights; the writers print this on every object
    notes: tuple[str, ...] = field(default=())

    @property
    def alerts(self) -> tuple[Classification, ...]:
        """Classifications flagged for the technologist."""
        items = list(self.classifications)
        if self.summary is not None:
            items.append(self.summary)
        return tuple(c for c in items if c.uncertain)

    def for_instance(self, sop_instance_uid: str) -> Findings:
        """The part of a batched result that is about one source instance (no series summary)."""

        def mine(ref: ImageRef | None) -> bool:
            return ref is not None and ref.sop_instance_uid == sop_instance_uid

        return Findings(
            model_id=self.model_id,
            model_version=self.model_version,
            classifications=tuple(c for c in self.classifications if mine(c.source)),
            measurements=tuple(m for m in self.measurements if mine(m.source)),
            detections=tuple(d for d in self.detections if mine(d.source)),
            images=tuple(i for i in self.images if mine(i.source)),
            summary=None,
            not_for_clinical_use=self.not_for_clinical_use,
            notes=(),  # a batch's notes describe the batch, not this instance
        )
