"""Findings: the only contract between a clinical model and the result writers.

A model turns a batch into one `Findings`. Writers (SR, SC, GSPS, alerts) read only these types;
they never look at tensors or at the model. Everything is frozen so a stage cannot change what
another stage already handed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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


#: what the writers and the viewer text say of an input the domain guard refused
NOT_ASSESSED_TEXT = "not assessed: outside the model's validated input domain"


@dataclass(frozen=True)
class DomainVerdict:
    """The input-domain guard's answer for one source image (or the whole job when `source` is None).

    `score` is the guard's out-of-domain score (higher is further from the training data) and
    `threshold` the score above which the input is outside the validated domain. An input outside
    it is "not assessed": the writers say so (`NOT_ASSESSED_TEXT`) and it never raises a QA alert.
    """

    in_domain: bool
    score: float
    threshold: float
    source: ImageRef | None = None
    reason: str = ""  # short, no patient data, e.g. "feature distance 41.2 > 12.3"


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
    domain: tuple[DomainVerdict, ...] = ()  # the input-domain guard's verdicts (empty: no guard ran)

    @property
    def out_of_domain(self) -> tuple[DomainVerdict, ...]:
        """The verdicts of inputs outside the model's validated domain (not assessed)."""
        return tuple(v for v in self.domain if not v.in_domain)

    @property
    def assessed(self) -> bool:
        """False when any input of this result lies outside the model's validated domain."""
        return not self.out_of_domain

    def is_out_of_domain(self, ref: ImageRef | None) -> bool:
        """Whether the result about `ref` (None: the series summary) is "not assessed"."""
        bad = self.out_of_domain
        if ref is None:
            return bool(bad)  # a summary over any unassessed input is itself not assessed
        return any(v.source is None or (v.source.sop_instance_uid == ref.sop_instance_uid
                   and (v.source.frame is None or v.source.frame == ref.frame)) for v in bad)

    @property
    def alerts(self) -> tuple[Classification, ...]:
        """Classifications flagged for the technologist; never one about an input outside the domain."""
        items = [c for c in self.classifications if not self.is_out_of_domain(c.source)]
        if self.summary is not None and not self.is_out_of_domain(None):
            items.append(self.summary)
        return tuple(c for c in items if c.uncertain)

    def assessed_only(self) -> Findings:
        """These findings without any result about an input outside the domain (the verdicts stay).

        The `out_of_domain: suppress` route policy writes this: the SR then says only that those
        inputs were not assessed, with no grade or probability beside them.
        """
        if self.assessed:
            return self

        def keep(ref: ImageRef | None) -> bool:
            return not self.is_out_of_domain(ref)

        return replace(
            self,
            classifications=tuple(c for c in self.classifications if keep(c.source)),
            measurements=tuple(m for m in self.measurements if m.source is not None and keep(m.source)),
            detections=tuple(d for d in self.detections if keep(d.source)),
            images=tuple(i for i in self.images if keep(i.source)),
            summary=None,
        )

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
            domain=tuple(v for v in self.domain if mine(v.source)),
        )
