"""Synthetic hand radiographs with truth joints, boxes and grades (RA: SHS narrowing; OA: KL).

A hand is drawn in millimetres in the canonical frame of `models.hand_joints.joints` (right
hand, PA, fingers up, thumb on the left), then placed on the detector: scaled, rotated, shifted
and, for a left hand, mirrored. X-ray physics from the toolkit: path lengths through a soft
tissue envelope (forearm, palm, fingers) and through bones (radius, ulna, eight carpals drawn
as ellipsoids, metacarpals and phalanges as domed superellipses with a cortical shell around a
less dense medulla), Beer-Lambert attenuation, quantum noise, detector blur, log transform to
12-bit stored values, MONOCHROME1 or MONOCHROME2, written as CR or DX For Presentation with a
VOI window, ImagerPixelSpacing and laterality (ImageLaterality; "B" for both hands).

Disease, per joint and grade:

- **RA** (SHS narrowing 0-4 on the 15 SHS joints): the joint space shrinks (x1, 0.75, 0.55,
  0.3, 0); grade 3 is either < 50 % space or subluxation; grade 4 ankylosis (a bony bridge) or,
  on finger joints, complete luxation. Erosions (bone removed at the margins, more with grade),
  periarticular osteopenia (bone ends thinner with the hand's severity) and soft tissue swelling.
- **OA** (KL 0-4 on the 15 KL joints): narrowing (x1, 0.85, 0.7, 0.45, 0.2), osteophytes at the
  margins growing with grade, subchondral sclerosis from grade 3, deformity (angulation) at 3-4.

Every joint the detector knows has a truth box from `models.hand_joints.joints.joint_box`
(true centre, true bone axis, hand-scaled width). Everything is seeded; a single hand takes a
few tens of milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydicom import Dataset
from scipy import ndimage

from models.hand_joints import joints as J
from train.phantoms import dicom_writer, toolkit

Disease = Literal["RA", "OA"]

MU_SOFT = 0.022  # per mm of soft tissue
MU_BONE = 0.055  # per mm of cortical bone (on top of the soft tissue it displaces)
MU_MARROW_DEFICIT = 0.03  # medulla is this much less dense than cortex

NORMAL_GAP_MM: dict[str, float] = {
    **{f"DIP{k}": 1.0 for k in range(2, 6)}, **{f"PIP{k}": 1.3 for k in range(2, 6)},
    "IP1": 1.3, **{f"MCP{k}": 1.8 for k in range(1, 6)},
    "CMC1": 1.5, "CMC3": 1.4, "CMC4": 1.4, "CMC5": 1.4, "STT": 1.5, "CSL": 1.6, "RC": 2.2,
}
SHS_GAP = (1.0, 0.75, 0.55, 0.3, 0.0)
KL_GAP = (1.0, 0.85, 0.7, 0.45, 0.2)
FINGER_JOINTS = frozenset(f"{k}{d}" for k in ("DIP", "PIP", "MCP") for d in range(1, 6)) | {"IP1"}

# Ray layout in the canonical frame (mm, x right, y down, RC joint centre at the origin).
_MC_LENGTH = {1: 44.0, 2: 66.0, 3: 63.0, 4: 57.0, 5: 53.0}
_PP_LENGTH = {1: 31.0, 2: 39.0, 3: 43.0, 4: 40.0, 5: 32.0}
_MP_LENGTH = {2: 23.0, 3: 27.0, 4: 25.0, 5: 19.0}
_DP_LENGTH = {1: 23.0, 2: 18.0, 3: 19.0, 4: 19.0, 5: 17.0}
_RAY_ANGLE = {1: -40.0, 2: -7.0, 3: 0.0, 4: 6.0, 5: 13.0}  # degrees from "up", + towards little finger
_FINGER_SPREAD = {1: 4.0, 2: -3.0, 3: 0.0, 4: 4.0, 5: 8.0}  # extra angle of the phalanges


@dataclass(frozen=True)
class HandTruth:
    """One hand in one image: side, disease, grades and truth joints in source pixel coordinates.

    `keypoints` maps joint name -> (col, row) pixel-centre coordinates of the source image;
    `boxes` joint name -> (col_min, row_min, col_max, row_max) in DICOM continuous coordinates
    (the pixel (i, j) covers [j, j+1) x [i, i+1)); `grades` holds the scheme grade of each
    scored joint (SHS joints for RA hands, KL joints for OA hands).
    """

    laterality: Literal["L", "R"]
    disease: Disease
    severity: float
    scheme: str
    grades: dict[str, int]
    keypoints: dict[str, tuple[float, float]]
    boxes: dict[str, tuple[float, float, float, float]]


@dataclass(frozen=True)
class HandImage:
    """One radiograph (one or two hands) with its truth."""

    dataset: Dataset
    hands: tuple[HandTruth, ...]
    patient_id: str


@dataclass
class _Canvas:
    """Path-length maps being drawn and the mm -> pixel placement of the current hand."""

    shape: tuple[int, int]
    spacing: float
    soft: np.ndarray = field(init=False)
    bone: np.ndarray = field(init=False)
    origin: np.ndarray = field(default_factory=lambda: np.zeros(2))
    rotation: float = 0.0
    scale: float = 1.0
    mirror: bool = False

    def __post_init__(self) -> None:
        self.soft = np.zeros(self.shape)
        self.bone = np.zeros(self.shape)

    def to_px(self, p: np.ndarray) -> np.ndarray:
        """Canonical mm (x, y) -> pixel (col, row)."""
        x, y = float(p[0]) * self.scale, float(p[1]) * self.scale
        if self.mirror:
            x = -x
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        return self.origin + np.array([c * x - s * y, s * x + c * y]) / self.spacing

    def vec_px(self, v: np.ndarray) -> np.ndarray:
        return self.to_px(v) - self.to_px(np.zeros(2))

    def patch(self, center: np.ndarray, radius: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        h, w = self.shape
        c0, c1 = max(0, int(center[0] - radius) - 1), min(w, int(center[0] + radius) + 2)
        r0, r1 = max(0, int(center[1] - radius) - 1), min(h, int(center[1] + radius) + 2)
        if c0 >= c1 or r0 >= r1:
            return None
        rows, cols = np.mgrid[r0:r1, c0:c1].astype(np.float64)
        return slice(r0, r1), slice(c0, c1), cols - center[0], rows - center[1]

    def superellipse(self, a_mm: np.ndarray, b_mm: np.ndarray, width_mm: float, thickness_mm: float,
                     *, target: str = "bone", exponent: float = 4.0, mode: str = "max",
                     weight: float = 1.0) -> None:
        """A domed superellipse between a and b (canonical mm), `width_mm` across."""
        a, b = self.to_px(a_mm), self.to_px(b_mm)
        center = (a + b) / 2
        axis = b - a
        length = float(np.hypot(*axis))
        if length < 1e-6:
            return
        u_dir = axis / length
        half_u, half_v = length / 2, width_mm * self.scale / self.spacing / 2
        got = self.patch(center, math.hypot(half_u, half_v))
        if got is None:
            return
        rs, cs, dx, dy = got
        u = dx * u_dir[0] + dy * u_dir[1]
        v = -dx * u_dir[1] + dy * u_dir[0]
        if exponent == 4.0:  # the common case, without fractional powers
            uu, vv = (u / half_u) ** 2, (v / half_v) ** 2
            q = np.clip(1.0 - uu * uu - vv * vv, 0, None)
            path = thickness_mm * self.scale * np.sqrt(np.sqrt(q))
        else:
            q = 1.0 - np.abs(u / half_u) ** exponent - np.abs(v / half_v) ** exponent
            path = thickness_mm * self.scale * np.clip(q, 0, None) ** (1.0 / exponent)
        self._apply(target, rs, cs, path * weight, mode)

    def ellipsoid(self, center_mm: np.ndarray, axes_mm: tuple[float, float], thickness_mm: float,
                  *, angle_deg: float = 0.0, target: str = "bone", mode: str = "max",
                  weight: float = 1.0) -> None:
        """An ellipsoid chord map; `angle_deg` turns the first semi-axis from canonical x."""
        center = self.to_px(center_mm)
        t = math.radians(angle_deg)
        u_dir = self.vec_px(np.array([math.cos(t), math.sin(t)]))
        u_dir = u_dir / (np.hypot(*u_dir) or 1.0)
        a = axes_mm[0] * self.scale / self.spacing
        b = axes_mm[1] * self.scale / self.spacing
        got = self.patch(center, max(a, b))
        if got is None:
            return
        rs, cs, dx, dy = got
        u = dx * u_dir[0] + dy * u_dir[1]
        v = -dx * u_dir[1] + dy * u_dir[0]
        q = 1.0 - (u / a) ** 2 - (v / b) ** 2
        path = thickness_mm * self.scale * np.sqrt(np.clip(q, 0, None))
        self._apply(target, rs, cs, path * weight, mode)

    def _apply(self, target: str, rs: slice, cs: slice, path: np.ndarray, mode: str) -> None:
        arr = self.soft if target == "soft" else self.bone
        if mode == "max":
            arr[rs, cs] = np.maximum(arr[rs, cs], path)
        elif mode == "add":
            arr[rs, cs] += path
        elif mode == "scale":  # multiply by (1 - path), path in [0, 1]
            arr[rs, cs] *= np.clip(1.0 - path, 0.0, 1.0)
        else:
            raise ValueError(mode)


def _unit(deg: float) -> np.ndarray:
    """Canonical direction `deg` from "up" (negative y), positive towards +x."""
    t = math.radians(deg)
    return np.array([math.sin(t), -math.cos(t)])


def _perp(d: np.ndarray) -> np.ndarray:
    return np.array([-d[1], d[0]])


def _sample_grade(g: np.random.Generator, severity: float) -> int:
    mean = 4.2 * severity**1.1 - 0.3
    return int(np.clip(np.rint(g.normal(mean, 1.1)), 0, 4))


@dataclass
class _Bone:
    a: np.ndarray
    b: np.ndarray
    width: float


class _HandBuilder:
    """Draws one hand and records its joints (canonical mm) as it goes."""

    def __init__(self, canvas: _Canvas, g: np.random.Generator, disease: Disease, severity: float,
                 grades: dict[str, int]) -> None:
        self.cv, self.g, self.disease, self.severity, self.grades = canvas, g, disease, severity, grades
        self.joints: dict[str, np.ndarray] = {}
        self.bones: list[_Bone] = []
        self.width_jitter = float(g.uniform(0.95, 1.05))
        self.gap_jitter = float(g.uniform(0.85, 1.15))

    # -- per-joint disease -------------------------------------------------------------------

    def gap(self, name: str) -> float:
        grade = self.grades.get(name, 0)
        base = NORMAL_GAP_MM[name] * self.gap_jitter * float(self.g.uniform(0.9, 1.1))
        if self.disease == "RA":
            factor = SHS_GAP[grade]
            if grade == 3 and self.g.random() < 0.5:
                factor = 0.55  # subluxation keeps some space; the offset makes it grade 3
        else:
            factor = KL_GAP[grade]
        return base * factor

    def offset(self, name: str, width: float) -> float:
        """Lateral displacement of the distal bone (subluxation, luxation, OA deformity)."""
        grade = self.grades.get(name, 0)
        sign = 1.0 if self.g.random() < 0.5 else -1.0
        if self.disease == "RA" and name in FINGER_JOINTS:
            if grade == 3:
                return sign * width * float(self.g.uniform(0.25, 0.4))
            if grade == 4 and self.g.random() < 0.4:
                return sign * width * float(self.g.uniform(0.7, 0.95))  # luxation
        if self.disease == "OA" and grade >= 3:
            return sign * width * float(self.g.uniform(0.05, 0.15))
        return 0.0

    def angulation(self, name: str) -> float:
        grade = self.grades.get(name, 0)
        if self.disease == "OA" and name in FINGER_JOINTS and grade >= 3:
            lo, hi = (5.0, 12.0) if grade == 3 else (12.0, 22.0)
            return float(self.g.uniform(lo, hi)) * (1 if self.g.random() < 0.5 else -1)
        return 0.0

    # -- drawing -----------------------------------------------------------------------------

    def bone(self, a: np.ndarray, b: np.ndarray, width: float, *, density: float = 1.0) -> None:
        w = width * self.width_jitter
        d = b - a
        length = float(np.hypot(*d))
        u = d / length
        self.cv.superellipse(a + 0.12 * length * u, b - 0.12 * length * u, 0.78 * w, 0.78 * w * density)
        cap = 0.2 * length
        self.cv.superellipse(a, a + cap * u, w, 0.9 * w * density)
        self.cv.superellipse(b - cap * u, b, w, 0.9 * w * density)
        # medulla: less dense core, so the cortex shows as a brighter shell
        self.cv.superellipse(a + 0.1 * length * u, b - 0.1 * length * u, 0.45 * w,
                             0.45 * w * MU_MARROW_DEFICIT / MU_BONE, mode="add", weight=-1.0)
        self.bones.append(_Bone(a, b, w))

    def joint_features(self, name: str, center: np.ndarray, axis: np.ndarray, width: float) -> None:
        """Erosions, osteopenia, swelling (RA) or osteophytes and sclerosis (OA) at a joint."""
        grade = self.grades.get(name, 0)
        g = self.g
        across = _perp(axis)
        w = width * self.width_jitter
        if self.disease == "RA":
            if name in FINGER_JOINTS and self.severity > 0.3:
                self.cv.ellipsoid(center, (0.9 * w, 0.7 * w), 6.0 * self.severity, target="soft",
                                  mode="add", angle_deg=float(np.degrees(np.arctan2(across[1], across[0]))))
            for _ in range(int(g.poisson(0.8 * grade))):
                side = 1 if g.random() < 0.5 else -1
                along = (1 if g.random() < 0.5 else -1) * g.uniform(0.5, 2.5)
                spot = center + side * across * w * 0.45 + along * axis
                r = float(g.uniform(0.7, 1.6))
                self.cv.ellipsoid(spot, (r, r), 1.0, mode="scale", weight=0.8)
            if self.severity > 0.2:
                self.cv.ellipsoid(center, (1.1 * w, 1.1 * w), 1.0, mode="scale",
                                  weight=0.12 * self.severity)
            if grade == 4 and self.grades_kind(name) == "ankylosis":
                self.cv.superellipse(center - 1.5 * axis, center + 1.5 * axis, 0.7 * w, 0.7 * w)
        else:
            if grade >= 1:
                size = (0.0, 0.5, 1.1, 1.8, 2.8)[grade] * float(g.uniform(0.8, 1.2))
                for side in (-1, 1):
                    for along in (-1, 1):
                        if grade == 1 and g.random() < 0.5:
                            continue
                        spot = center + side * across * (0.5 * w + 0.35 * size) + along * axis * 1.2
                        self.cv.ellipsoid(spot, (size * 0.6, size * 0.35), 0.9 * size + 1.0,
                                          angle_deg=float(np.degrees(np.arctan2(across[1], across[0]))))
            if grade >= 3:
                band = 1.0 if grade == 3 else 1.8
                for along in (-1, 1):
                    p = center + along * axis * (band / 2 + 0.8)
                    self.cv.superellipse(p - axis * band / 2, p + axis * band / 2, 0.8 * w,
                                         (2.0 if grade == 3 else 3.5), mode="add")

    def grades_kind(self, name: str) -> str:
        key = f"_kind_{name}"
        if not hasattr(self, key):
            setattr(self, key, "ankylosis" if (name not in FINGER_JOINTS or self.g.random() < 0.6)
                    else "luxation")
        return str(getattr(self, key))

    def ray(self, k: int, base: np.ndarray, base_joint: str | None, s_len: float) -> None:
        """Metacarpal and phalanges of ray k from its base (canonical mm); records joints."""
        g = self.g
        angle = _RAY_ANGLE[k] + float(g.normal(0, 2.0))
        widths = {"MC": 11.0 if k == 1 else J.REFERENCE_WIDTH_MM[f"MCP{k}"] * 0.95,
                  "PP": J.REFERENCE_WIDTH_MM["IP1" if k == 1 else f"PIP{k}"],
                  "MP": J.REFERENCE_WIDTH_MM.get(f"DIP{k}", 7.0) + 0.8,
                  "DP": J.REFERENCE_WIDTH_MM.get(f"DIP{k}", 7.0) - 0.5}
        if k == 1:
            bones = [("MC", _MC_LENGTH[1], None), ("PP", _PP_LENGTH[1], "MCP1"),
                     ("DP", _DP_LENGTH[1], "IP1")]
        else:
            bones = [("MC", _MC_LENGTH[k], None), ("PP", _PP_LENGTH[k], f"MCP{k}"),
                     ("MP", _MP_LENGTH[k], f"PIP{k}"), ("DP", _DP_LENGTH[k], f"DIP{k}")]
        start = base
        direction = _unit(angle)
        for i, (kind, length, joint_before) in enumerate(bones):
            if joint_before is not None:
                gap = self.gap(joint_before)
                prev_dir = direction
                spread = _FINGER_SPREAD[k] if i == 1 else 0.0
                direction = _unit(angle + spread + float(g.normal(0, 2.5)) + self.angulation(joint_before))
                angle = angle + spread
                lateral = self.offset(joint_before, widths[kind])
                center = start + prev_dir * gap / 2 + _perp(prev_dir) * lateral / 2
                self.joints[joint_before] = center
                self.joint_features(joint_before, center, prev_dir, widths[kind])
                start = start + prev_dir * gap + _perp(prev_dir) * lateral
            end = start + direction * length * s_len
            self.bone(start, end, widths[kind])
            start = end
        self.tip = start

    def draw(self) -> None:
        g, cv = self.g, self.cv
        s_len = float(g.uniform(0.95, 1.05))
        # forearm soft tissue and palm
        cv.superellipse(np.array([2.0, 120.0]), np.array([2.0, -5.0]), 62.0, 45.0, target="soft", exponent=3)
        cv.ellipsoid(np.array([0.0, -45.0]), (40.0, 52.0), 30.0, target="soft")
        # radius and ulna
        g_rc = self.gap("RC")
        cv.superellipse(np.array([-4.0, 150.0]), np.array([-4.0, g_rc / 2]), 24.0 * self.width_jitter, 20.0)
        cv.superellipse(np.array([-4.0, 130.0]), np.array([-4.0, 10.0]), 11.0, 11.0 * MU_MARROW_DEFICIT / MU_BONE,
                        mode="add", weight=-1.0)
        cv.superellipse(np.array([16.0, 150.0]), np.array([16.0, 4.0]), 12.0 * self.width_jitter, 11.0)
        self.joints["RC"] = np.array([-4.0, 0.0])
        self.joint_features("RC", self.joints["RC"], np.array([0.0, -1.0]), 24.0)
        # proximal carpal row
        sca = np.array([-10.0, -g_rc / 2 - 6.0])
        lun = np.array([2.0, -g_rc / 2 - 6.0])
        tri = np.array([13.0, -9.0])
        cv.ellipsoid(sca, (6.5, 6.0), 11.0, angle_deg=-20)
        cv.ellipsoid(lun, (6.0, 6.0), 11.0)
        cv.ellipsoid(tri, (5.0, 5.0), 9.0)
        cv.ellipsoid(np.array([17.0, -6.0]), (3.5, 3.5), 6.0)  # pisiform
        # distal row: STT and CSL gaps set the trapezium and capitate
        g_stt, g_csl = self.gap("STT"), self.gap("CSL")
        sca_top = sca[1] - 6.0
        trp = np.array([-14.0, sca_top - g_stt - 5.5])
        self.joints["STT"] = np.array([-12.0, sca_top - g_stt / 2])
        self.joint_features("STT", self.joints["STT"], np.array([0.0, -1.0]), 11.0)
        lun_top = lun[1] - 6.0
        cap = np.array([2.0, lun_top - g_csl - 9.0])
        self.joints["CSL"] = np.array([0.0, lun_top - g_csl / 2])
        self.joint_features("CSL", self.joints["CSL"], np.array([0.0, -1.0]), 13.0)
        tzd = np.array([-6.5, trp[1] - 1.5])
        ham = np.array([12.5, lun_top - 9.0])
        cv.ellipsoid(trp, (6.0, 5.5), 11.0, angle_deg=-30)
        cv.ellipsoid(tzd, (4.0, 5.0), 9.0)
        cv.ellipsoid(cap, (5.5, 9.0), 11.0)
        cv.ellipsoid(ham, (5.5, 8.0), 10.0, angle_deg=10)
        # rays, each from its carpometacarpal joint
        bases = {
            1: ("CMC1", trp + np.array([-3.0, -5.5])),
            2: (None, tzd + np.array([0.0, -5.0])),
            3: ("CMC3", cap + np.array([0.0, -9.0])),
            4: ("CMC4", ham + np.array([-2.0, -7.5])),
            5: ("CMC5", ham + np.array([3.0, -6.0])),
        }
        for k in (1, 2, 3, 4, 5):
            cmc, surface = bases[k]
            direction = _unit(_RAY_ANGLE[k])
            gap = self.gap(cmc) if cmc else 1.2
            if cmc:
                self.joints[cmc] = surface + direction * gap / 2
                self.joint_features(cmc, self.joints[cmc], direction,
                                    J.REFERENCE_WIDTH_MM[cmc])
            self.ray(k, surface + direction * gap, cmc, s_len)
            # finger soft tissue around the ray
            base = surface + direction * gap
            cv.superellipse(base, self.tip + direction * 3.0, 2.1 * J.REFERENCE_WIDTH_MM.get(
                f"PIP{k}", 9.0), 16.0, target="soft", exponent=2.5)


def _truth_geometry(points_px: dict[str, np.ndarray]) -> dict[str, tuple[float, float, float, float]]:
    """Truth boxes from truth keypoints by the model's own box rule (pixel-centre coordinates in,
    DICOM continuous coordinates out)."""
    pts = np.array([points_px[name] for name in J.JOINTS])
    boxes = {}
    for name, geo in zip(J.JOINTS, J.geometry_from_keypoints(pts), strict=True):
        c0, r0, c1, r1 = J.joint_box(name, geo)
        boxes[name] = (c0 + 0.5, r0 + 0.5, c1 + 0.5, r1 + 0.5)
    return boxes


def _grades_for(g: np.random.Generator, disease: Disease, severity: float) -> dict[str, int]:
    scheme = J.SHS if disease == "RA" else J.KL
    return {name: _sample_grade(g, severity) for name in J.SCHEME_JOINTS[scheme]}


HAND_FIELD_MM = (170.0, 250.0)  # width, height of the detector area one hand is placed in


def render_hands(g: np.random.Generator, sides: tuple[Literal["L", "R"], ...], spacing: float,
                 diseases: tuple[Disease, ...], severities: tuple[float, ...]
                 ) -> tuple[np.ndarray, list[HandTruth]]:
    """Transmitted intensity of one image with the given hands (left to right on the detector)."""
    width_mm = HAND_FIELD_MM[0] * len(sides)
    shape = (int(round(HAND_FIELD_MM[1] / spacing)), int(round(width_mm / spacing)))
    cv = _Canvas(shape, spacing)
    hands = []
    for i, (side, disease, severity) in enumerate(zip(sides, diseases, severities, strict=True)):
        cv.scale = float(g.uniform(0.88, 1.12))
        cv.rotation = math.radians(float(g.normal(0, 6.0)))
        cv.mirror = side == "L"
        centre_x = HAND_FIELD_MM[0] * (i + 0.5) + float(g.uniform(-10, 10))
        cv.origin = np.array([centre_x, 185.0 + float(g.uniform(-12, 12))]) / spacing
        grades = _grades_for(g, disease, severity)
        hb = _HandBuilder(cv, g, disease, severity, grades)
        hb.draw()
        points = {name: cv.to_px(p) for name, p in hb.joints.items()}
        hands.append(HandTruth(
            laterality=side, disease=disease, severity=severity,
            scheme=J.SHS if disease == "RA" else J.KL, grades=grades,
            keypoints={k: (float(v[0]), float(v[1])) for k, v in points.items()},
            boxes=_truth_geometry(points)))
    heel = np.linspace(1.0 + float(g.uniform(-0.08, 0.08)), 1.0, shape[0])[:, None]
    intensity = toolkit.beer_lambert([cv.soft, cv.bone], [MU_SOFT, MU_BONE]) * heel
    return intensity, hands


_VENDORS = (
    ("CR", "FUJIFILM Corporation", "FCR PROFECT CS"),
    ("CR", "Carestream Health", "DirectView CR 975"),
    ("DX", "Philips Medical Systems", "DigitalDiagnost"),
    ("DX", "SIEMENS", "Ysio Max"),
)


def hand_image(seed: int, *, patient_id: str | None = None, n_hands: int | None = None,
               laterality: Literal["L", "R"] | None = None, disease: Disease | None = None,
               monochrome1: bool | None = None, modality: Literal["CR", "DX"] | None = None,
               spacing: float | None = None, subject: dicom_writer.Subject | None = None,
               series_uid: str | None = None, instance_number: int = 1) -> HandImage:
    """One seeded hand radiograph (one hand, or both side by side) as DICOM with its truth."""
    g = toolkit.rng(seed)
    n = n_hands or (2 if g.random() < 0.2 else 1)
    sides: tuple[Literal["L", "R"], ...]
    if n == 2:
        sides = ("R", "L")  # displayed as facing the patient: the right hand on the image's left
    else:
        sides = (laterality or ("L" if g.random() < 0.5 else "R"),)
    dis = disease or ("RA" if g.random() < 0.5 else "OA")
    severity = float(g.beta(1.1, 1.6))
    sev = tuple(float(np.clip(severity + g.normal(0, 0.1), 0, 1)) for _ in sides)
    sp = spacing or round(float(g.uniform(0.25, 0.35)), 3)
    intensity, hands = render_hands(g, sides, sp, tuple(dis for _ in sides), sev)
    noisy = toolkit.quantum_noise(intensity, g, photons=float(np.exp(g.uniform(np.log(3e3), np.log(3e4)))))
    noisy = ndimage.gaussian_filter(noisy, float(g.uniform(0.4, 0.9)))
    mono1 = bool(g.random() < 0.5) if monochrome1 is None else monochrome1
    stored = toolkit.radiograph_pixels(noisy, monochrome1=mono1, bits_stored=12)
    lo, hi = np.percentile(stored, [0.5, 99.8])
    vendor = _VENDORS[int(g.integers(len(_VENDORS)))]
    mod: Literal["CR", "DX"] = modality or ("CR" if vendor[0] == "CR" else "DX")
    if modality is not None and vendor[0] != modality:
        vendor = next(v for v in _VENDORS if v[0] == modality)
    pid = patient_id or f"PH-HAND-{seed:06d}"
    subject = subject or dicom_writer.Subject(
        patient_id=pid, patient_name="PHANTOM^HAND",
        study_uid=dicom_writer.phantom_uid("hand-study", pid),
        study_description="RHEUMATOID ARTHRITIS FOLLOW-UP" if dis == "RA" else "HAND OSTEOARTHRITIS")
    side_word = {"L": "LEFT", "R": "RIGHT"}
    desc = "BOTH HANDS PA" if n == 2 else f"HAND PA {side_word[sides[0]]}"
    ds = dicom_writer.xray(
        stored, modality=mod, monochrome1=mono1, window_center=float((lo + hi) / 2),
        window_width=float(max(hi - lo, 16)), laterality=sides[0], imager_pixel_spacing=(sp, sp),
        body_part="HAND", view_position="PA", subject=subject, series_description=desc,
        manufacturer=vendor[1], model_name=vendor[2],
        series_uid=series_uid or dicom_writer.phantom_uid("hand-series", pid, str(seed)),
        sop_instance_uid=dicom_writer.phantom_uid("hand-image", pid, str(seed)),
        instance_number=instance_number)
    if n == 2:
        ds.ImageLaterality = "B"
    return HandImage(dicom_writer.with_file_meta(ds), tuple(hands), pid)


def hand_cohort(n_images: int, seed: int) -> list[HandImage]:
    """`n_images` seeded radiographs, one per fake patient (so a patient split is an image split)."""
    return [hand_image(seed * 100_003 + i, patient_id=f"PH-HAND-{seed}-{i:05d}") for i in range(n_images)]


def demo_series(seed: int = 0) -> list[Dataset]:
    """One small hand series for `sidecar demo`: a left-hand RA radiograph, MONOCHROME1 CR."""
    img = hand_image(seed + 7, laterality="L", disease="RA", monochrome1=True, modality="CR", n_hands=1)
    return [img.dataset]


