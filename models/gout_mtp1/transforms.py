"""MTP1 ultrasound -> network input, and the view the headers state; shared by training and serving.

Input: the greyscale channel of the first frame from the ultrasound front end (`models.us`:
region crop, text and caliper masking, colour annotations filled in), letterboxed to S x S,
values in [0, 1]: (1, S, S). The model is one network across views, so the view is recorded,
never used to choose weights.

View: the View Code Sequence's meaning when present (PS3.3 C.8.5.6), else a DORSAL / MEDIAL /
PLANTAR token in SeriesDescription or ProtocolName, else "unknown".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from models.us.frontend import FrontEndConfig, still_channels

VIEWS = ("dorsal", "medial", "plantar")
_VIEW_RE = re.compile(r"\b(dorsal|medial|plantar|lateral)\b", re.IGNORECASE)


@dataclass(frozen=True)
class GoutTransform:
    """The preprocessing a checkpoint was trained with (stored in its metadata)."""

    size: int = 128


def to_input(ds: Dataset, config: GoutTransform = GoutTransform()) -> np.ndarray:
    """One US object (first frame of a cine) -> float32 (1, S, S)."""
    return still_channels(ds, FrontEndConfig(size=config.size)).grey[None].astype(np.float32)


def view_of(ds: Dataset) -> str:
    """"dorsal", "medial", "plantar" (or "lateral") when the headers say so, else "unknown"."""
    try:
        seq = ds.get("ViewCodeSequence")
        if seq:
            match = _VIEW_RE.search(str(seq[0].get("CodeMeaning", "")))
            if match:
                return match.group(1).lower()
    except (AttributeError, IndexError, TypeError):
        pass
    for keyword in ("SeriesDescription", "ProtocolName"):
        match = _VIEW_RE.search(str(ds.get(keyword, "") or ""))
        if match:
            return match.group(1).lower()
    return "unknown"
