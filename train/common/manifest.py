"""The manifest: one CSV that says which images a site has, whose they are and what they show.

Columns (only `path` and `patient_id` are required; the order on disk is the order below):

    path               a DICOM file, a folder of one series (filtered by `series_uid` when set),
                       a multi-frame cine, or a PNG; relative paths are relative to the CSV
    patient_id         the key for patient-level splits; never leaves the site
    study_uid, series_uid, sop_instance_uid   DICOM UIDs (PS3.5 §9.1 grammar) where known
    label              the primary label, as text (a class name, a grade, a number)
    label_<name>       further labels, e.g. label_synovitis
    reader<N>_<name>   a reader's score, numeric, e.g. reader1_vas, reader2_vas; empty = missing
    view, site         free text (e.g. "4CH", "site-A")
    split              train / val / test / external, or empty before splitting

`Manifest.read` validates every cell and raises `ManifestError` naming the file, the line and the
column. `build_manifest` walks a DICOM (or PNG) folder, groups files by the chosen key, joins a
label CSV and writes the manifest.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import pydicom
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

BASE_COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    "study_uid",
    "series_uid",
    "sop_instance_uid",
    "label",
)
TAIL_COLUMNS: tuple[str, ...] = ("view", "site", "split")
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "patient_id")
UID_COLUMNS: tuple[str, ...] = ("study_uid", "series_uid", "sop_instance_uid")

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LABEL_COLUMN_RE = re.compile(r"^label_[a-z0-9_]+$")
_READER_COLUMN_RE = re.compile(r"^reader[0-9]+_[a-z0-9_]+$")
_SPLIT_RE = re.compile(r"^[a-z0-9_-]*$")

Key = Literal["sop_instance_uid", "series_uid", "accession", "path"]
KEYS: tuple[str, ...] = ("sop_instance_uid", "series_uid", "accession", "path")


class ManifestError(ValueError):
    """A manifest or label CSV that cannot be used; the message names file, line and column."""


def _is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID_RE.match(value))


@dataclass(frozen=True)
class ManifestRow:
    """One image, series or cine with its labels. Frozen: stages hand rows on, never edit them.

    `labels` holds the `label_<name>` columns keyed by `<name>`; `reader_scores` holds the
    `reader<N>_<name>` columns keyed by the full column name, NaN where a reader gave no score.
    """

    path: str
    patient_id: str
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""
    label: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    reader_scores: Mapping[str, float] = field(default_factory=dict)
    view: str = ""
    site: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            raise ManifestError("column 'path': empty")
        if not self.patient_id:
            raise ManifestError("column 'patient_id': empty")
        for column in UID_COLUMNS:
            value = getattr(self, column)
            if value and not _is_uid(value):
                raise ManifestError(f"column {column!r}: {value!r} is not a DICOM UID")
        if not _SPLIT_RE.match(self.split):
            raise ManifestError(
                f"column 'split': {self.split!r} is not a split name (lower-case letters, "
                "digits, '_' or '-', e.g. train, val, test, external)"
            )
        for name in self.labels:
            if not _LABEL_COLUMN_RE.match(f"label_{name}"):
                raise ManifestError(f"column 'label_{name}': bad label name")
        for name in self.reader_scores:
            if not _READER_COLUMN_RE.match(name):
                raise ManifestError(f"column {name!r}: reader columns are reader<N>_<name>")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "reader_scores", MappingProxyType(dict(self.reader_scores)))

    def to_record(self) -> dict[str, str]:
        """The row as CSV cells (column -> text)."""
        record = {column: str(getattr(self, column)) for column in BASE_COLUMNS}
        record.update({f"label_{k}": v for k, v in self.labels.items()})
        record.update(
            {k: ("" if math.isnan(v) else repr(float(v))) for k, v in self.reader_scores.items()}
        )
        record.update({column: str(getattr(self, column)) for column in TAIL_COLUMNS})
        return record


@dataclass(frozen=True)
class Manifest:
    """An ordered, immutable set of rows, plus the folder relative paths are resolved against."""

    rows: tuple[ManifestRow, ...]
    root: Path = Path(".")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> ManifestRow:
        return self.rows[index]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column this manifest writes, in file order."""
        label_cols = sorted({f"label_{k}" for row in self.rows for k in row.labels})
        reader_cols = sorted({k for row in self.rows for k in row.reader_scores})
        return (*BASE_COLUMNS, *label_cols, *reader_cols, *TAIL_COLUMNS)

    @property
    def reader_columns(self) -> tuple[str, ...]:
        """The reader score columns, e.g. ("reader1_vas", "reader2_vas")."""
        return tuple(sorted({k for row in self.rows for k in row.reader_scores}))

    def resolve(self, row: ManifestRow) -> Path:
        """The absolute path of a row's image (relative paths are relative to `root`)."""
        path = Path(row.path)
        return path if path.is_absolute() else (self.root / path).resolve()

    def split(self, name: str) -> Manifest:
        """The rows of one split (e.g. "train"), same root."""
        return Manifest(tuple(r for r in self.rows if r.split == name), self.root)

    def patient_ids(self) -> list[str]:
        """Patient id per row, in row order (what a patient-level splitter takes)."""
        return [r.patient_id for r in self.rows]

    def label_texts(self, column: str = "label") -> list[str]:
        """The text of `column` ("label" or "label_<name>") per row."""
        if column == "label":
            return [r.label for r in self.rows]
        name = column.removeprefix("label_")
        return [r.labels.get(name, "") for r in self.rows]

    def with_splits(self, splits: Sequence[str]) -> Manifest:
        """A copy with one split name per row (e.g. from a patient-level splitter)."""
        if len(splits) != len(self.rows):
            raise ManifestError(f"{len(splits)} split names for {len(self.rows)} rows")
        return Manifest(tuple(replace(r, split=s) for r, s in zip(self.rows, splits, strict=True)), self.root)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read and validate a manifest CSV; errors name the file, the line and the column."""
        path = Path(path)
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            _check_header(header, path)
            rows = []
            for line_no, record in enumerate(reader, start=2):
                rows.append(_row_from_record(record, where=f"{path}:{line_no}"))
        return cls(tuple(rows), path.parent.resolve())

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as CSV (UTF-8, header first) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = self.columns
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            for row in self.rows:
                writer.writerow(row.to_record())
        return path


def _check_header(header: Sequence[str], path: Path) -> None:
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise ManifestError(f"{path}:1: column {column!r} appears twice")
        seen.add(column)
        known = column in BASE_COLUMNS or column in TAIL_COLUMNS
        if not (known or _LABEL_COLUMN_RE.match(column) or _READER_COLUMN_RE.match(column)):
            raise ManifestError(
                f"{path}:1: unknown column {column!r}; expected one of "
                f"{', '.join(BASE_COLUMNS + TAIL_COLUMNS)}, label_<name> or reader<N>_<name>"
            )
    for column in REQUIRED_COLUMNS:
        if column not in seen:
            raise ManifestError(f"{path}:1: required column {column!r} is missing")


def _row_from_record(record: Mapping[str, str | None], *, where: str) -> ManifestRow:
    cells = {k: (v or "").strip() for k, v in record.items() if k is not None}
    if None in record:
        raise ManifestError(f"{where}: more cells than header columns")
    labels = {k.removeprefix("label_"): v for k, v in cells.items() if _LABEL_COLUMN_RE.match(k)}
    scores: dict[str, float] = {}
    for column, text in cells.items():
        if not _READER_COLUMN_RE.match(column):
            continue
        if text == "":
            scores[column] = math.nan
            continue
        try:
            scores[column] = float(text)
        except ValueError:
            raise ManifestError(
                f"{where}: column {column!r}: {text!r} is not a number"
            ) from None
    try:
        return ManifestRow(
            **{c: cells.get(c, "") for c in BASE_COLUMNS + TAIL_COLUMNS},
            labels=labels,
            reader_scores=scores,
        )
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None


# --- building a manifest from a folder -----------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """What the folder walk learned about one file."""

    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    accession: str


def _walk(folder: Path) -> Iterator[_Found]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() == ".png":
            yield _Found(path, "", "", "", "", "")
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError):
            log.debug("manifest_skip_not_dicom file=%s", path.name)
            continue
        yield _Found(
            path,
            str(ds.get("PatientID", "") or ""),
            str(ds.get("StudyInstanceUID", "") or ""),
            str(ds.get("SeriesInstanceUID", "") or ""),
            str(ds.get("SOPInstanceUID", "") or ""),
            str(ds.get("AccessionNumber", "") or ""),
        )


def _read_labels(labels_csv: Path, key: str) -> dict[str, dict[str, str]]:
    with labels_csv.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        if key not in header:
            raise ManifestError(f"{labels_csv}:1: key column {key!r} is missing")
        for column in header:
            ok = (
                column == key
                or column in ("patient_id", "label", "view", "site", "split")
                or _LABEL_COLUMN_RE.match(column)
                or _READER_COLUMN_RE.match(column)
            )
            if not ok:
                raise ManifestError(f"{labels_csv}:1: unknown column {column!r}")
        table: dict[str, dict[str, str]] = {}
        for line_no, record in enumerate(reader, start=2):
            value = (record.get(key) or "").strip()
            if not value:
                raise ManifestError(f"{labels_csv}:{line_no}: column {key!r}: empty")
            if value in table:
                raise ManifestError(f"{labels_csv}:{line_no}: column {key!r}: {value!r} twice")
            table[value] = {k: (v or "").strip() for k, v in record.items() if k is not None}
    return table


def _common_location(paths: Sequence[Path]) -> Path:
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def build_manifest(
    dicom_dir: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str],
    *,
    key: Key = "sop_instance_uid",
    out_csv: str | os.PathLike[str],
    strict: bool = False,
) -> Manifest:
    """Walk `dicom_dir`, group files by `key`, join the label CSV, write and return the manifest.

    Keys: `sop_instance_uid` (one row per file), `series_uid` (one row per series; the path is
    the series' file when it has one, else the folder holding it, and `series_uid` narrows the
    folder), `accession` (one row per accession number, i.e. per study), `path` (PNG or any
    file named in the label CSV's `path` column relative to `dicom_dir`, with `patient_id`
    taken from the label CSV). The label CSV has the key column plus any of label, label_*,
    reader<N>_*, view, site, split and patient_id (which overrides the DICOM PatientID).
    Files without a label row are left out (counted in the log); with `strict`, a label row
    without a file is an error.
    """
    if key not in KEYS:
        raise ManifestError(f"key must be one of {', '.join(KEYS)}, got {key!r}")
    folder = Path(dicom_dir).resolve()
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder")
    out_path = Path(out_csv).resolve()
    table = _read_labels(Path(labels_csv), key)

    groups: dict[str, list[_Found]] = defaultdict(list)
    for found in _walk(folder):
        if key == "path":
            value = found.path.relative_to(folder).as_posix()
        elif key == "sop_instance_uid":
            value = found.sop_instance_uid
        elif key == "series_uid":
            value = found.series_uid
        else:
            value = found.accession
        if value:
            groups[value].append(found)

    rows: list[ManifestRow] = []
    unlabelled = 0
    for value, members in sorted(groups.items()):
        record = table.get(value)
        if record is None:
            unlabelled += len(members)
            continue
        first = members[0]
        location = _common_location([m.path for m in members])
        patient_id = record.get("patient_id") or first.patient_id
        where = f"{labels_csv}: {key} {value!r}"
        if not patient_id:
            raise ManifestError(f"{where}: no patient_id (no DICOM PatientID, no column)")
        same_series = len({m.series_uid for m in members}) == 1
        same_study = len({m.study_uid for m in members}) == 1
        cells = {
            "path": os.path.relpath(location, out_path.parent),
            "patient_id": patient_id,
            "study_uid": first.study_uid if same_study else "",
            "series_uid": first.series_uid if same_series else "",
            "sop_instance_uid": first.sop_instance_uid if len(members) == 1 else "",
            **{k: v for k, v in record.items() if k not in (key, "patient_id")},
        }
        rows.append(_row_from_record(cells, where=where))
    missing = sorted(set(table) - set(groups))
    if missing and strict:
        raise ManifestError(
            f"{labels_csv}: {len(missing)} label rows match no file, e.g. {key} {missing[0]!r}"
        )
    log.info(
        "manifest_built rows=%d unlabelled_files=%d labels_without_files=%d",
        len(rows),
        unlabelled,
        len(missing),
    )
    manifest = Manifest(tuple(rows), out_path.parent)
    manifest.write(out_path)
    return manifest
