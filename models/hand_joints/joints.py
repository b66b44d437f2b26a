"""The joints each scoring scheme reads, their grades, and the box a joint gets from its geometry.

Joints are named in a canonical **right hand, postero-anterior, fingers towards row 0, thumb
towards column 0** (a left hand is mirrored into it and mirrored back for reporting).

Schemes (which joints are scored):

- **SHS narrowing** (modified Sharp/van der Heijde joint space narrowing, 15 joints per hand):
  MCP1-5, PIP2-5, CMC3-5, trapezium-scaphoid (STT), capitate-scaphoid-lunate (CSL) and the
  radiocarpal joint (RC). The thumb IP joint is not scored for narrowing.
- **KL** (Kellgren-Lawrence for hand OA, 15 joints): DIP2-5, PIP2-5, thumb IP (IP1), MCP1-5 and
  CMC1 (STT optional and left out here).

Grades are 0-4 in both schemes (the wording is in `SHS_GRADES` / `KL_GRADES`) and map to the
seed study's three classes healthy / mild / severe (`THREE_CLASS`):

- SHS narrowing: 0 healthy; 1-2 mild (focal, or generalised with > 50 % of the space left);
  3-4 severe (< 50 % left or subluxation; ankylosis or luxation).
- KL: 0-1 healthy (1 is "doubtful"); 2 mild (definite osteophytes); 3-4 severe.

The box of a joint (`joint_box`) is the axis-aligned hull of a rectangle centred on the joint,
aligned with the bone axis through it, whose size follows the local bone width. The phantoms'
truth boxes and the model's boxes use this one rule, the model with widths scaled from its own
keypoints, so a box is a property of joint geometry and never a free regression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHS = "shs"
KL = "kl"
SCHEMES: tuple[str, str] = (SHS, KL)

#: All joints the detector localises, in heatmap-channel order.
JOINTS: tuple[str, ...] = (
    "DIP2", "DIP3", "DIP4", "DIP5",
    "PIP2", "PIP3", "PIP4", "PIP5",
    "IP1",
    "MCP1", "MCP2", "MCP3", "MCP4", "MCP5",
    "CMC1", "CMC3", "CMC4", "CMC5",
    "STT", "CSL", "RC",
)
JOINT_INDEX = {name: i for i, name in enumerate(JOINTS)}

SCHEME_JOINTS: dict[str, tuple[str, ...]] = {
    SHS: ("MCP1", "MCP2", "MCP3", "MCP4", "MCP5", "PIP2", "PIP3", "PIP4", "PIP5",
          "CMC3", "CMC4", "CMC5", "STT", "CSL", "RC"),
    KL: ("DIP2", "DIP3", "DIP4", "DIP5", "PIP2", "PIP3", "PIP4", "PIP5", "IP1",
         "MCP1", "MCP2", "MCP3", "MCP4", "MCP5", "CMC1"),
}

#: Human names, used as the SR finding site and in the presentation state labels.
JOINT_SITES: dict[str, str] = {
    **{f"DIP{k}": f"distal interphalangeal joint of finger {k}" for k in range(2, 6)},
    **{f"PIP{k}": f"proximal interphalangeal joint of finger {k}" for k in range(2, 6)},
    "IP1": "interphalangeal joint of thumb",
    **{f"MCP{k}": f"metacarpophalangeal joint {k}" for k in range(1, 6)},
    **{f"CMC{k}": f"carpometacarpal joint {k}" for k in (1, 3, 4, 5)},
    "STT": "scaphotrapezial joint",
    "CSL": "capitate-scaphoid-lunate joint",
    "RC": "radiocarpal joint",
}

SHS_GRADES: tuple[str, ...] = (
    "0 normal",
    "1 focal or doubtful narrowing",
    "2 generalised narrowing, more than 50% of the joint space left",
    "3 generalised narrowing, less than 50% left, or subluxation",
    "4 ankylosis or complete luxation",
)
KL_GRADES: tuple[str, ...] = (
    "0 none",
    "1 doubtful narrowing, possible osteophytic lipping",
    "2 definite osteophytes, possible narrowing",
    "3 multiple osteophytes, definite narrowing, some sclerosis, possible deformity",
    "4 large osteophytes, marked narrowing, severe sclerosis, definite deformity",
)
N_GRADES = 5

HEALTHY, MILD, SEVERE = "healthy", "mild", "severe"
THREE_CLASSES: tuple[str, str, str] = (HEALTHY, MILD, SEVERE)
#: grade (0-4) -> index into THREE_CLASSES, per scheme
THREE_CLASS: dict[str, tuple[int, ...]] = {SHS: (0, 1, 1, 2, 2), KL: (0, 0, 1, 2, 2)}

#: Grade label strings as they appear in Findings (they name the scheme).
GRADE_LABEL_PREFIX = {SHS: "SHS JSN", KL: "KL"}


def grade_label(scheme: str, grade: int) -> str:
    """`"SHS JSN 2"` or `"KL 3"`: the label of one grade."""
    return f"{GRADE_LABEL_PREFIX[scheme]} {int(grade)}"


def grade_labels(scheme: str) -> tuple[str, ...]:
    return tuple(grade_label(scheme, g) for g in range(N_GRADES))


def three_class_probabilities(scheme: str, grade_probs: Sequence[float]) -> np.ndarray:
    """P(healthy), P(mild), P(severe) as sums of the grade probabilities."""
    out = np.zeros(3)
    for g, p in enumerate(grade_probs):
        out[THREE_CLASS[scheme][g]] += float(p)
    return out


def three_class_describe() -> str:
    """The grade-to-class mapping in one paragraph, for the model card."""
    return (
        "Three classes as the seed study reports them: SHS narrowing 0 = healthy, 1-2 = mild, "
        "3-4 = severe; KL 0-1 = healthy (KL 1 is 'doubtful'), 2 = mild, 3-4 = severe. A class "
        "probability is the sum of its grades' probabilities."
    )


# --- geometry --------------------------------------------------------------------------------

#: Bone width (mm) at each joint for a reference adult hand (scale 1.0); the phantoms draw
#: bones this wide and the model scales these by the hand size it measures.
REFERENCE_WIDTH_MM: dict[str, float] = {
    **{f"DIP{k}": 7.0 for k in range(2, 6)},
    **{f"PIP{k}": 8.5 for k in range(2, 6)},
    "IP1": 9.0,
    "MCP1": 11.0, "MCP2": 10.0, "MCP3": 10.0, "MCP4": 9.0, "MCP5": 8.5,
    "CMC1": 12.0, "CMC3": 11.0, "CMC4": 9.0, "CMC5": 9.0,
    "STT": 11.0, "CSL": 13.0, "RC": 24.0,
}
#: Crop side (for the grader) in bone widths at the joint.
CROP_FACTORS: dict[str, float] = {**dict.fromkeys(JOINTS, 2.0), "CMC1": 1.8, "CMC3": 1.8,
                                  "CMC4": 1.8, "CMC5": 1.8, "STT": 1.6, "CSL": 1.6, "RC": 1.2}
#: Box extent relative to the bone width: (across the axis, along the axis).
BOX_FACTORS: dict[str, tuple[float, float]] = {
    **dict.fromkeys(JOINTS, (1.4, 1.3)),
    "STT": (1.2, 1.0), "CSL": (1.1, 1.0), "RC": (1.15, 0.55),
}
#: Reference distance (mm) from RC to MCP3 at scale 1.0, the model's hand-size ruler.
REFERENCE_RC_TO_MCP3_MM = 96.0

#: For each joint, the (proximal, distal) joints whose direction gives its bone axis.
AXIS_PAIRS: dict[str, tuple[str, str]] = {
    **{f"DIP{k}": (f"PIP{k}", f"DIP{k}") for k in range(2, 6)},
    **{f"PIP{k}": (f"MCP{k}", f"PIP{k}") for k in range(2, 6)},
    "IP1": ("MCP1", "IP1"),
    "MCP1": ("CMC1", "MCP1"), "MCP2": ("CSL", "MCP2"), "MCP3": ("CMC3", "MCP3"),
    "MCP4": ("CMC4", "MCP4"), "MCP5": ("CMC5", "MCP5"),
    "CMC1": ("CMC1", "MCP1"), "CMC3": ("CMC3", "MCP3"), "CMC4": ("CMC4", "MCP4"),
    "CMC5": ("CMC5", "MCP5"),
    "STT": ("RC", "CMC3"), "CSL": ("RC", "CMC3"), "RC": ("RC", "CMC3"),
}


@dataclass(frozen=True)
class JointGeometry:
    """Where a joint is and how it lies: centre (col, row) in pixels, unit axis (dcol, drow)
    pointing distally, and the bone width in pixels."""

    center: tuple[float, float]
    axis: tuple[float, float]
    width_px: float


def joint_box(name: str, geometry: JointGeometry) -> tuple[float, float, float, float]:
    """(col_min, row_min, col_max, row_max) of the joint's rotated rectangle's hull."""
    across, along = BOX_FACTORS[name]
    half_u = 0.5 * along * geometry.width_px  # along the axis
    half_v = 0.5 * across * geometry.width_px  # across it
    ax, ay = geometry.axis
    norm = math.hypot(ax, ay) or 1.0
    ax, ay = ax / norm, ay / norm
    ext_c = abs(ax) * half_u + abs(ay) * half_v
    ext_r = abs(ay) * half_u + abs(ax) * half_v
    c, r = geometry.center
    return (c - ext_c, r - ext_r, c + ext_c, r + ext_r)


def geometry_from_keypoints(points: np.ndarray) -> list[JointGeometry]:
    """Joint geometry from detected keypoints (K, 2) as (col, row) in one canonical hand image.

    The axis of each joint comes from the pair in `AXIS_PAIRS`; the bone widths are the
    reference widths scaled by the measured RC-to-MCP3 distance over its reference, so widths
    follow the hand itself and need no pixel spacing (which CR headers may lack).
    """
    pts = np.asarray(points, dtype=np.float64)
    ruler_px = float(np.hypot(*(pts[JOINT_INDEX["MCP3"]] - pts[JOINT_INDEX["RC"]])))
    px_per_ref_mm = max(ruler_px, 1.0) / REFERENCE_RC_TO_MCP3_MM
    out = []
    for name in JOINTS:
        a, b = AXIS_PAIRS[name]
        d = pts[JOINT_INDEX[b]] - pts[JOINT_INDEX[a]]
        if float(np.hypot(*d)) < 1e-6:
            d = np.array([0.0, -1.0])
        out.append(JointGeometry(
            center=(float(pts[JOINT_INDEX[name], 0]), float(pts[JOINT_INDEX[name], 1])),
            axis=(float(d[0]), float(d[1])),
            width_px=REFERENCE_WIDTH_MM[name] * px_per_ref_mm,
        ))
    return out
