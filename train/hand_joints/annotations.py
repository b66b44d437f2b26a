"""A site's annotated hand radiographs for `python -m train hand_joints fit|evaluate --manifest M.csv`.

**Where the joints are.** The manifest (`train.common.manifest`: path, patient_id, ...,
split) names one CR/DX DICOM radiograph per row. Its joints live in a companion CSV: the
manifest row's `label_joints_csv` cell when it has one (relative to the manifest's folder),
else `<manifest stem>.joints.csv` beside the manifest (`hands.csv` -> `hands.joints.csv`).

**The joints CSV**, one row per joint of one hand (columns in any order, unknown columns refused):

=================  ==========================================================================
sop_instance_uid   the radiograph's SOPInstanceUID (matches the manifest column, else the
                   file's header) ...
path               ... or its path as the manifest writes it (or relative to the joints CSV);
                   at least one of the two per row
joint              a joint name of `models.hand_joints.joints.JOINTS` (DIP2-5, PIP2-5, IP1,
                   MCP1-5, CMC1, CMC3-5, STT, CSL, RC), named as in a right hand
laterality         L or R: the hand the joint belongs to
x, y               the joint centre in source pixels: 0-based column and row, (0, 0) the
                   centre of the top-left pixel (numpy indexing), on the stored image (no flip)
x0, y0, x1, y1     optional box (all four or none), DICOM image coordinates as in an SR
                   SCOORD (PS3.3 C.10.5.1.2: the top-left pixel spans 0..1); blank: the model's
                   own box rule from the keypoints (`joints.joint_box`)
shs_jsn            SHS joint space narrowing 0-4 on an SHS joint, blank when not scored
kl                 Kellgren-Lawrence 0-4 on a KL joint, blank when not scored
=================  ==========================================================================

Every annotated hand needs all 21 joints (the detector learns every heatmap channel); grades
may cover any subset. Both hands on one radiograph are two sets of rows, L and R. The side comes
from the image header (ImageLaterality, Laterality, descriptions) exactly as in service, and
must agree with the annotation; a radiograph whose header does not say is read as the
annotation says (both sides annotated: "B", split in two). Manifest rows without joints are left
out (counted); joints rows without a manifest row are an error.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from models.hand_joints import joints as J, transforms as T
from train.common.manifest import Manifest, ManifestError, ManifestRow

KEY_COLUMNS: tuple[str, ...] = ("sop_instance_uid", "path")
BOX_COLUMNS: tuple[str, ...] = ("x0", "y0", "x1", "y1")
COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, "joint", "laterality", "x", "y", *BOX_COLUMNS, "shs_jsn", "kl")
REQUIRED: tuple[str, ...] = ("joint", "laterality", "x", "y")
JOINTS_CSV_LABEL = "joints_csv"  # the manifest column label_joints_csv


class AnnotationError(ManifestError):
    """A joints CSV (or its pairing with the manifest) that cannot be used; names file and line."""


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class AnnotatedHand:
    """One hand's truth in source coordinates: keypoints (0-based col, row), boxes (DICOM
    continuous), and the grades scored on it per scheme."""

    laterality: str
    keypoints: Mapping[str, tuple[float, float]]
    boxes: Mapping[str, Box]
    shs: Mapping[str, int] = field(default_factory=dict)
    kl: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AnnotatedImage:
    """One radiograph with its annotated hands; pixels are read on demand (`load`)."""

    name: str  # where it came from, for messages (manifest file:line, or a phantom index)
    patient_id: str
    split: str
    hands: tuple[AnnotatedHand, ...]
    path: Path | None = None
    dataset: Dataset | None = None

    def load(self) -> Dataset:
        if self.dataset is not None:
            return self.dataset
        assert self.path is not None
        return pydicom.dcmread(self.path)

    def side(self, ds: Dataset) -> str:
        """The laterality the hands are cut with: the header's, checked against the annotation."""
        sides = {h.laterality for h in self.hands}
        header = T.laterality_of(ds)
        if header in ("L", "R") and sides != {header}:
            raise AnnotationError(f"{self.name}: joints annotated on side(s) {''.join(sorted(sides))} "
                                  f"but the image header says laterality {header}")
        if header is not None:
            return header
        return "B" if len(sides) == 2 else next(iter(sides))

    def canonical_hands(self, ds: Dataset) -> list[tuple[T.Hand, AnnotatedHand]]:
        """The serving transforms' canonical hands paired with their truth (unannotated dropped)."""
        by_side = {h.laterality: h for h in self.hands}
        return [(hand, by_side[hand.laterality]) for hand in T.hands_of(ds, self.side(ds))
                if hand.laterality in by_side]


class _PhantomTruth(Protocol):  # read-only members, so a narrower type (Literal side) fits
    @property
    def laterality(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def grades(self) -> dict[str, int]: ...
    @property
    def keypoints(self) -> dict[str, tuple[float, float]]: ...
    @property
    def boxes(self) -> dict[str, Box]: ...


class _Phantom(Protocol):
    @property
    def dataset(self) -> Dataset: ...
    @property
    def hands(self) -> tuple[_PhantomTruth, ...]: ...
    @property
    def patient_id(self) -> str: ...


def from_phantom(image: _Phantom, name: str, split: str = "") -> AnnotatedImage:
    """A `train.phantoms.hand.HandImage` as an annotated image (the grades under its scheme)."""
    hands = tuple(AnnotatedHand(
        h.laterality, dict(h.keypoints), dict(h.boxes),
        shs=dict(h.grades) if h.scheme == J.SHS else {}, kl=dict(h.grades) if h.scheme == J.KL else {})
        for h in image.hands)
    return AnnotatedImage(name, image.patient_id, split, hands, dataset=image.dataset)


def boxes_from_keypoints(points: Mapping[str, tuple[float, float]]) -> dict[str, Box]:
    """The model's box rule on truth keypoints (0-based pixel centres in, DICOM continuous out)."""
    pts = np.array([points[name] for name in J.JOINTS], dtype=np.float64)
    out = {}
    for name, geo in zip(J.JOINTS, J.geometry_from_keypoints(pts), strict=True):
        c0, r0, c1, r1 = J.joint_box(name, geo)
        out[name] = (c0 + 0.5, r0 + 0.5, c1 + 0.5, r1 + 0.5)
    return out


# --- reading ---------------------------------------------------------------------------------


def joints_csv_for(manifest_path: Path, row: ManifestRow) -> Path:
    """The row's `label_joints_csv` (relative to the manifest folder), else <stem>.joints.csv."""
    named = row.labels.get(JOINTS_CSV_LABEL, "")
    if named:
        p = Path(named)
        return p if p.is_absolute() else (manifest_path.parent / p).resolve()
    return manifest_path.with_name(f"{manifest_path.stem}.joints.csv").resolve()


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(f"{where}: column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: column {column!r}: {text!r} is not finite")
    return value


def _grade(text: str, column: str, joint: str, scheme: str, where: str) -> int | None:
    if text == "":
        return None
    if text not in ("0", "1", "2", "3", "4"):
        raise AnnotationError(f"{where}: column {column!r}: {text!r} is not a grade 0-4 (or blank)")
    if joint not in J.SCHEME_JOINTS[scheme]:
        raise AnnotationError(f"{where}: column {column!r}: {joint} is not scored in that scheme; "
                              f"its joints are {', '.join(J.SCHEME_JOINTS[scheme])}")
    return int(text)


@dataclass
class _HandRows:
    where: str  # first row, for messages
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)
    boxes: dict[str, Box] = field(default_factory=dict)
    shs: dict[str, int] = field(default_factory=dict)
    kl: dict[str, int] = field(default_factory=dict)


def _read_joints_csv(path: Path, match: dict[str, dict[str, int]]) -> dict[int, dict[str, _HandRows]]:
    """Rows of one joints CSV grouped by manifest row index and side; `match` maps each key column
    to {value: manifest row index}."""
    if not path.is_file():
        raise AnnotationError(f"{path}: joints CSV not found (a manifest's joints live in "
                              "<manifest stem>.joints.csv beside it, or in its label_joints_csv column)")
    out: dict[int, dict[str, _HandRows]] = defaultdict(dict)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        for column in header:
            if column not in COLUMNS:
                raise AnnotationError(f"{path}:1: unknown column {column!r}; expected {', '.join(COLUMNS)}")
        for column in REQUIRED:
            if column not in header:
                raise AnnotationError(f"{path}:1: required column {column!r} is missing")
        if not any(c in header for c in KEY_COLUMNS):
            raise AnnotationError(f"{path}:1: needs a sop_instance_uid or a path column")
        for line, record in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if None in record:
                raise AnnotationError(f"{where}: more cells than header columns")
            cells = {k: (v or "").strip() for k, v in record.items()}
            joint = cells["joint"]
            if joint not in J.JOINT_INDEX:
                raise AnnotationError(f"{where}: joint {joint!r} is not a joint of the model; expected one "
                                      f"of {', '.join(J.JOINTS)}")
            side = cells["laterality"].upper()
            if side not in ("L", "R"):
                raise AnnotationError(f"{where}: laterality {cells['laterality']!r}: expected L or R")
            index = None
            for key in KEY_COLUMNS:
                value = cells.get(key, "")
                if value:
                    index = match[key].get(value if key != "path" else _path_key(value, path))
                    if index is None and key == "path":
                        index = match[key].get(value)
                    if index is None:
                        raise AnnotationError(f"{where}: {key} {value!r} names no row of the manifest")
                    break
            else:
                raise AnnotationError(f"{where}: no sop_instance_uid or path: which radiograph?")
            hand = out[index].setdefault(side, _HandRows(where))
            if joint in hand.keypoints:
                raise AnnotationError(f"{where}: joint {joint} of side {side} given twice for this radiograph")
            hand.keypoints[joint] = (_number(cells["x"], "x", where), _number(cells["y"], "y", where))
            box_cells = [cells.get(c, "") for c in BOX_COLUMNS]
            if any(box_cells):
                if not all(box_cells):
                    raise AnnotationError(f"{where}: a box needs all of x0, y0, x1, y1 (or none)")
                x0, y0, x1, y1 = (_number(t, c, where) for t, c in zip(box_cells, BOX_COLUMNS, strict=True))
                if not (x0 < x1 and y0 < y1):
                    raise AnnotationError(f"{where}: box ({x0}, {y0}, {x1}, {y1}) is empty (need x0 < x1, y0 < y1)")
                hand.boxes[joint] = (x0, y0, x1, y1)
            for column, scheme, grades in (("shs_jsn", J.SHS, hand.shs), ("kl", J.KL, hand.kl)):
                g = _grade(cells.get(column, ""), column, joint, scheme, where)
                if g is not None:
                    grades[joint] = g
    return out


def _path_key(text: str, base: Path) -> str:
    p = Path(text)
    return str(p if p.is_absolute() else (base.parent / p).resolve())


def read_annotated_manifest(manifest_path: Path) -> tuple[list[AnnotatedImage], int]:
    """The manifest's annotated radiographs (all splits) and the number of rows without joints."""
    manifest_path = Path(manifest_path).resolve()
    manifest = Manifest.read(manifest_path)
    groups: dict[Path, list[int]] = defaultdict(list)
    for i, row in enumerate(manifest):
        groups[joints_csv_for(manifest_path, row)].append(i)
    images: list[AnnotatedImage | None] = [None] * len(manifest)
    for csv_path, indices in groups.items():
        match: dict[str, dict[str, int]] = {"sop_instance_uid": {}, "path": {}}
        for i in indices:
            row = manifest[i]
            match["path"][row.path] = i
            match["path"][str(manifest.resolve(row))] = i
            uid = row.sop_instance_uid or _header_uid(manifest.resolve(row))
            if uid:
                match["sop_instance_uid"][uid] = i
        for i, sides in _read_joints_csv(csv_path, match).items():
            row = manifest[i]
            hands = []
            for side, rows in sorted(sides.items(), key=lambda kv: kv[0] != "R"):
                missing = [n for n in J.JOINTS if n not in rows.keypoints]
                if missing:
                    raise AnnotationError(
                        f"{rows.where}: side {side} of this radiograph lacks joints {', '.join(missing)}; "
                        f"every annotated hand needs all {len(J.JOINTS)} joints")
                boxes = {**boxes_from_keypoints(rows.keypoints), **rows.boxes}
                hands.append(AnnotatedHand(side, rows.keypoints, boxes, rows.shs, rows.kl))
            images[i] = AnnotatedImage(f"{manifest_path}:{i + 2}", row.patient_id, row.split, tuple(hands),
                                       path=manifest.resolve(row))
    found = [img for img in images if img is not None]
    return found, len(manifest) - len(found)


def _header_uid(path: Path) -> str:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPInstanceUID", "") or "")
    except (OSError, InvalidDicomError):
        return ""


def split_of(images: Sequence[AnnotatedImage], split: str, manifest: Path) -> list[AnnotatedImage]:
    """The annotated images of one split; an empty split is an error naming it."""
    chosen = [img for img in images if img.split == split]
    if not chosen:
        raise AnnotationError(f"{manifest}: no annotated radiographs in split {split!r}")
    return chosen
