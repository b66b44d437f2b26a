"""Ultrasound object -> synovitis network input, the one path for training and serving.

Each variant fixes what it reads (`VARIANTS`):

- SGS (static greyscale): one frame, the greyscale channel: (1, S, S);
- SPD (static power Doppler): one frame, greyscale + Doppler channels: (2, S, S);
- DGS (dynamic greyscale): `frames` uniformly sampled cine frames: (T, 1, S, S);
- DPD (dynamic power Doppler): the `frames` cine frames with most flow (Doppler-aware): (T, 2, S, S).

A still given to a cine variant is repeated T times; a cine given to a still variant gives its
frame with most flow (SPD) or its middle frame (SGS). The channels come from `models.us`
(region crop, text/caliper masking, Doppler separation, letterbox to S x S, values in [0, 1]).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom import Dataset

from models.us.decode import n_frames
from models.us.frontend import FrameChannels, FrontEndConfig, sample_frames, still_channels

Variant = Literal["sgs", "dgs", "spd", "dpd"]


@dataclass(frozen=True)
class VariantSpec:
    """What one variant sees."""

    code: str
    name: str
    doppler: bool
    cine: bool

    @property
    def channels(self) -> int:
        return 2 if self.doppler else 1


VARIANTS: dict[str, VariantSpec] = {
    "sgs": VariantSpec("SGS", "static greyscale", doppler=False, cine=False),
    "dgs": VariantSpec("DGS", "dynamic greyscale", doppler=False, cine=True),
    "spd": VariantSpec("SPD", "static power Doppler", doppler=True, cine=False),
    "dpd": VariantSpec("DPD", "dynamic power Doppler", doppler=True, cine=True),
}


@dataclass(frozen=True)
class SynovitisTransform:
    """The preprocessing a checkpoint was trained with (stored in its metadata)."""

    size: int = 128
    frames: int = 8

    @property
    def frontend(self) -> FrontEndConfig:
        return FrontEndConfig(size=self.size)


def _stack(fc: FrameChannels, doppler: bool) -> np.ndarray:
    return np.stack([fc.grey, fc.doppler] if doppler else [fc.grey]).astype(np.float32)


def to_input(ds: Dataset, variant: str, config: SynovitisTransform = SynovitisTransform()) -> np.ndarray:
    """One US object -> the variant's network input (see module docstring)."""
    spec = VARIANTS[variant]
    fe = config.frontend
    if spec.cine:
        mode: Literal["uniform", "doppler"] = "doppler" if spec.doppler else "uniform"
        frames = sample_frames(ds, config.frames, mode, fe)
        return np.stack([_stack(f, spec.doppler) for f in frames])
    if n_frames(ds) > 1:
        if spec.doppler:
            return _stack(sample_frames(ds, 1, "doppler", fe)[0], True)
        return _stack(still_channels(ds, fe, frame=n_frames(ds) // 2), False)
    return _stack(still_channels(ds, fe), spec.doppler)


_JOINT_RE = re.compile(r"\b(MCP|PIP|DIP|MTP|IP)\s*-?\s*([1-5])\b|\b(WRIST|KNEE|ANKLE|ELBOW|SHOULDER)\b",
                       re.IGNORECASE)
_JOINT_NAMES = {"MCP": "metacarpophalangeal joint", "PIP": "proximal interphalangeal joint",
                "DIP": "distal interphalangeal joint", "MTP": "metatarsophalangeal joint",
                "IP": "interphalangeal joint"}
_BODY_PART_SITES = {"WRIST": "wrist joint", "KNEE": "knee joint", "HAND": "hand", "FOOT": "foot",
                    "FINGER": "joint", "TOE": "joint"}


def joint_site(ds: Dataset) -> str:
    """The joint the headers name (series description first, then BodyPartExamined), else "joint"."""
    for keyword in ("SeriesDescription", "ProtocolName"):
        match = _JOINT_RE.search(str(ds.get(keyword, "") or ""))
        if match:
            if match.group(3):
                return f"{match.group(3).lower()} joint"
            return f"{_JOINT_NAMES[match.group(1).upper()]} {match.group(2)}"
    return _BODY_PART_SITES.get(str(ds.get("BodyPartExamined", "") or "").upper(), "joint")
