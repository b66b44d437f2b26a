"""Joint ultrasound phantoms for RA synovitis grading (EULAR-OMERACT), greyscale and power Doppler.

A longitudinal dorsal view of a small joint (MCP, PIP, wrist, knee recess or MTP): skin,
subcutaneous tissue, a fibrillar extensor tendon, two bone surfaces (bright, with acoustic
shadow beneath), hypoechoic cartilage over the head, the capsule, and the synovial recess
between the bones. Echogenicity maps go through PSF-correlated Rayleigh speckle and log
compression (`train.phantoms.toolkit`).

Grades follow the EULAR-OMERACT definitions (D'Agostino et al., RMD Open 2017):

- greyscale synovial hypertrophy (GS): 0 none (the recess holds a bright fat pad); 1 minimal,
  not beyond the line joining the bone surfaces (`bone_line`); 2 beyond that line with a flat or
  concave upper surface; 3 beyond it with a convex (bulging) surface;
- power Doppler (PD), only inside synovium: 0 none; 1 up to three single spots, or two
  confluent spots, or one confluent and two single; 2 less than half of the synovial area;
  3 more than half;
- combined score: 0 without synovial hypertrophy, else the higher of GS and PD
  (`combined_grade`).

Doppler is pulsatile: spot visibility and the flow area follow a cardiac pulse over the cine,
so a single still can catch diastole and under-call PD; the cine shows the peak. Speckle
decorrelates from frame to frame. Two simulated readers grade each case, each off by one
grade now and then.

Every case is written as vendor-style DICOM US (`dicom_writer.us_image` / `us_cine`): a display
frame with burned-in text outside the calibrated tissue region, a colour-flow region (type 2)
around the joint for power Doppler, RGB or MONOCHROME2 greyscale, a green orientation mark and
sometimes a caliper inside the region (annotations the front end must ignore).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset
from scipy import ndimage

from train.phantoms import dicom_writer as W, toolkit as T

REGION_ROWS, REGION_COLS = 112, 144
MM_PER_PX = 0.25
FRAME_ROWS, FRAME_COLS = 144, 176
REGION_X0, REGION_Y0 = 16, 24
CINE_FRAMES = 12
FRAME_TIME_MS = 40.0
GRADES = (0, 1, 2, 3)

#: joint -> (BodyPartExamined, description token)
JOINTS: dict[str, tuple[str, str]] = {
    "MCP2": ("HAND", "MCP2"), "MCP3": ("HAND", "MCP3"), "PIP2": ("FINGER", "PIP2"),
    "WRIST": ("WRIST", "WRIST RADIOCARPAL"), "KNEE": ("KNEE", "KNEE SUPRAPATELLAR"),
    "MTP2": ("FOOT", "MTP2"),
}
VENDORS = (("GE Healthcare", "LOGIQ E10", "L8-18i-D"), ("Philips", "EPIQ 7", "eL18-4"),
           ("Canon Medical Systems", "Aplio i800", "i18LX5"), ("Esaote", "MyLab X8", "L4-15"))


def combined_grade(gs: int, pd: int) -> int:
    """EULAR-OMERACT combined score: 0 without synovial hypertrophy, else max(GS, PD)."""
    if gs not in GRADES or pd not in GRADES:
        raise ValueError(f"grades are 0-3, got GS {gs}, PD {pd}")
    return 0 if gs == 0 else max(gs, pd)


@dataclass(frozen=True)
class JointCase:
    """One joint of one phantom patient, with its grades and the two readers' combined grades."""

    case_id: str
    patient_id: str
    joint: str
    laterality: str
    gs: int
    pd: int
    combined: int
    readers: tuple[int, int]
    seed: int


def sample_cases(n_patients: int, seed: int, joints_per_patient: int = 4) -> list[JointCase]:
    """A seeded cohort; combined grades roughly balanced, PD above GS in about a quarter."""
    g = T.rng(seed)
    cases = []
    for p in range(n_patients):
        for j in range(joints_per_patient):
            gs = int(g.choice(GRADES, p=(0.28, 0.26, 0.24, 0.22)))
            if gs == 0:
                pd = 0
            elif g.random() < 0.3 and gs < 3:
                pd = int(g.integers(gs + 1, 4))
            else:
                pd = int(g.integers(0, gs + 1))
            c = combined_grade(gs, pd)
            readers = tuple(int(np.clip(c + (g.choice((-1, 1)) if g.random() < 0.22 else 0), 0, 3))
                            for _ in range(2))
            cases.append(JointCase(
                case_id=f"{seed}-{p:04d}-{j}", patient_id=f"PH-RA{seed % 1000:03d}{p:04d}",
                joint=str(g.choice(list(JOINTS))), laterality=str(g.choice(("L", "R"))),
                gs=gs, pd=pd, combined=c, readers=(readers[0], readers[1]),
                seed=int(g.integers(0, 2**31 - 1))))
    return cases


# --- anatomy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Label maps and the echo map of one case (region pixels)."""

    echo: np.ndarray
    synovium: np.ndarray  # bool
    bone_surface: np.ndarray  # (cols,) row of the bone surface (inf over the joint gap)
    line: np.ndarray  # (cols,) row of the line joining the bone surfaces (nan outside it)


def bone_line(x: np.ndarray, p1: tuple[float, float], p2: tuple[float, float]) -> np.ndarray:
    """Row of the line joining the two bone-surface points (x, row) at columns `x`."""
    t = (x - p1[0]) / (p2[0] - p1[0])
    return p1[1] + t * (p2[1] - p1[1])


def anatomy(case: JointCase, g: np.random.Generator) -> Anatomy:
    """The echogenicity map of one joint and its synovium, per the case's GS grade."""
    h, w = REGION_ROWS, REGION_COLS
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    x = np.arange(w, dtype=np.float64)
    xj = w / 2 + g.uniform(-8, 8)
    ya, yb = 46 + g.uniform(-5, 5), 48 + g.uniform(-5, 5)
    xa, xb = xj - g.uniform(22, 28), xj + g.uniform(20, 26)
    gap = g.uniform(2.5, 4.0)
    dip1, dip2 = g.uniform(18, 26), g.uniform(16, 24)  # how far the surfaces fall into the joint
    surf = np.full(w, np.inf)
    left, right = x <= xj - gap, x >= xj + gap
    t1 = np.clip((x[left] - xa) / (xj - gap - xa), 0, None)
    t2 = np.clip((xb - x[right]) / (xb - xj - gap), 0, None)
    surf[left] = np.where(x[left] > xa, ya + dip1 * t1**1.2, ya + 0.004 * (x[left] - xa) ** 2)
    surf[right] = np.where(x[right] < xb, yb + dip2 * t2**1.2, yb + 0.004 * (x[right] - xb) ** 2)
    surf = np.minimum(surf, h - 6)
    joint_floor = max(surf[left][-1], surf[right][0]) + 4
    p1, p2 = (float(xa), float(ya)), (float(xb), float(yb))  # the bone apices either side
    line = np.where((x >= p1[0]) & (x <= p2[0]), bone_line(x, p1, p2), np.nan)
    floor = np.where(np.isfinite(surf), surf, joint_floor)

    echo = 0.45 + 0.08 * T.smooth_field((h, w), g, sigma_px=6)
    echo[rows < 3] = 2.0  # skin
    yt = 13 + g.uniform(-2, 3) + 2 * np.sin(2 * np.pi * cols / w + g.uniform(0, 6))
    tendon = (rows >= yt) & (rows <= yt + g.uniform(5, 8))
    echo = np.where(tendon, 1.3 * (1 + 0.45 * np.cos(2 * np.pi * rows / 2.3)), echo)

    # recess between the bones, below the line joining them
    span = (cols >= p1[0]) & (cols <= p2[0])
    line_rows = np.where(np.isnan(line), np.inf, line)[None, :]
    recess = span & (rows > line_rows) & (rows < floor[None, :])
    mid, half = (p1[0] + p2[0]) / 2, (p2[0] - p1[0]) / 2
    u = np.clip((cols - mid) / (half + 8), -1, 1)
    bump = 1 - u**2
    if case.gs == 0:
        syn = np.zeros((h, w), bool)
        echo = np.where(recess, 1.6, echo)  # normal fat pad
    elif case.gs == 1:
        depth = g.uniform(3, 11)  # top stays below the line
        syn = recess & (rows > line_rows + depth * (1 - 0.5 * bump))
        echo = np.where(recess & ~syn, 1.6, echo)
    else:
        lo, hi = (p1[0] - 8, p2[0] + 8)
        ext = (cols >= lo) & (cols <= hi)
        line_ext = bone_line(cols, p1, p2)
        if case.gs == 2:
            height = g.uniform(3, 7)
            shape = 1 - g.uniform(0.0, 0.5) * bump  # flat to concave: lowest in the middle
            elevation = height * shape * np.clip((half + 8 - np.abs(cols - mid)) / 5, 0, 1)
        else:
            height = g.uniform(7, 13)
            elevation = height * (0.2 + 1.0 * bump) * np.clip((half + 8 - np.abs(cols - mid)) / 5, 0, 1)
        top = line_ext - elevation
        syn = ext & (rows > top) & (rows < floor[None, :])
    echo = np.where(syn, 0.03 + 0.01 * T.smooth_field((h, w), g, sigma_px=3), echo)
    cap = np.zeros((h, w), bool)
    if syn.any():
        has_syn = np.asarray(syn.any(axis=0), dtype=bool)
        top_row = np.where(has_syn, np.argmax(syn, axis=0), -10)
        cap = (rows >= top_row[None, :] - 2) & (rows < top_row[None, :]) & has_syn[None, :]
    echo = np.where(cap, 1.2, echo)
    # cartilage over the head, bone surfaces, shadows
    cart = left[None, :] & (rows >= surf[None, :] - 3) & (rows < surf[None, :] - 0.5) & (cols > xa - 30)
    echo = np.where(cart, 0.04, echo)
    below = rows >= surf[None, :]
    echo = np.where(below, 0.03 * np.exp(-(rows - surf[None, :]) / 12), echo)
    echo = np.where(np.abs(rows - surf[None, :]) < 1.5, 5.0, echo)
    deep_gap = ~np.isfinite(surf)[None, :] & (rows >= floor[None, :])
    echo = np.where(deep_gap, 0.25, echo)
    return Anatomy(np.clip(echo, 0, None), syn & ~below, surf, line)


def _pd_field(case: JointCase, syn: np.ndarray, g: np.random.Generator) -> tuple[np.ndarray, float]:
    """(vascular map inside synovium in [0, 1], target coverage) per the PD grade."""
    h, w = syn.shape
    field = np.zeros((h, w))
    if case.pd == 0 or not syn.any():
        return field, 0.0
    ys, xs = np.nonzero(syn)
    if case.pd == 1:
        n = int(g.integers(1, 4))
        for _ in range(n):
            i = int(g.integers(0, len(ys)))
            blob = T.ellipse_mask((h, w), (ys[i], xs[i]), (g.uniform(2.2, 3.2), g.uniform(2.0, 2.8)))
            field = np.maximum(field, blob * g.uniform(0.6, 1.0))
        return field * syn, float((field > 0).sum()) / float(syn.sum())
    smooth = T.smooth_field((h, w), g, sigma_px=2.0)
    coverage = g.uniform(0.14, 0.38) if case.pd == 2 else g.uniform(0.62, 0.9)
    cut = np.quantile(smooth[syn], 1 - coverage)
    field = np.clip((smooth - cut) / 1.5 + 0.5, 0, 1) * (smooth >= cut) * syn
    return field, coverage


def _complex_speckle(shape: tuple[int, int], g: np.random.Generator) -> np.ndarray:
    re, im = g.standard_normal((2, *shape))
    return ndimage.gaussian_filter(re, (0.8, 1.6)) + 1j * ndimage.gaussian_filter(im, (0.8, 1.6))


def _bmode(echo: np.ndarray, speckle: np.ndarray, gain: float) -> np.ndarray:
    env = np.sqrt(echo) * np.abs(speckle) * 2.5
    env = T.psf_blur(env, axial_sigma_px=0.5, lateral_sigma_px=0.6)
    return np.clip(T.log_compress(env, dynamic_range_db=48.0) * gain, 0, 1)


def _palette(power: np.ndarray) -> np.ndarray:
    """A vendor-like power Doppler palette: dark red to orange to yellow (uint8 RGB)."""
    p = np.clip(power, 0, 1)
    return np.stack([150 + 105 * p, 20 + 220 * p**1.5, 10 + 30 * p**3], axis=-1).astype(np.uint8)


def render(case: JointCase, *, doppler: bool, n_frames: int = 1) -> tuple[np.ndarray, Anatomy]:
    """(frames (n, REGION_ROWS, REGION_COLS, 3) uint8, anatomy). A still (n = 1) is one frame at
    a random point of the pulse; a cine covers about 1.5 pulses."""
    g = T.rng(case.seed)
    anat = anatomy(case, g)
    field, _ = _pd_field(case, anat.synovium, g)
    gain = g.uniform(0.85, 1.1)
    a, b = _complex_speckle(anat.echo.shape, g), _complex_speckle(anat.echo.shape, g)
    period = g.uniform(7, 10)
    phase = g.uniform(0, 2 * np.pi)
    spot_phase = g.uniform(0, 2 * np.pi, size=8)
    frames = []
    theta = g.uniform(0, np.pi / 2)
    for t in range(n_frames):
        theta += g.normal(0, 0.35) if t else 0.0
        grey = _bmode(anat.echo, np.cos(theta) * a + np.sin(theta) * b, gain)
        rgb = np.repeat(np.rint(grey * 255).astype(np.uint8)[..., None], 3, axis=2)
        if doppler and field.any():
            pulse = max(0.0, np.sin(2 * np.pi * t / period + phase)) ** 1.5
            if case.pd == 1:
                labels, n = ndimage.label(field > 0)
                vis = np.zeros_like(field, bool)
                for i in range(1, n + 1):
                    if 0.35 + 0.65 * max(0.0, np.sin(2 * np.pi * t / period + phase + 0.3 * spot_phase[i % 8])) > 0.45:
                        vis |= labels == i
                flow = field * vis
            else:
                level = 0.45 + 0.55 * pulse  # fraction of the vascular area lit at this instant
                cut = np.quantile(field[field > 0], 1 - level) if (field > 0).any() else 1.0
                flow = np.where(field >= cut, field, 0.0)
            lit = flow > 0
            rgb[lit] = _palette(0.35 + 0.65 * flow[lit] * (0.6 + 0.4 * pulse))
        frames.append(rgb)
    return np.stack(frames), anat


def _display(region: np.ndarray, g: np.random.Generator, *, colour_marks: bool) -> np.ndarray:
    """Region frames placed in a console display with burned-in text, marks and a caliper."""
    n = region.shape[0]
    out = np.zeros((n, FRAME_ROWS, FRAME_COLS, 3), np.uint8)
    out[:, REGION_Y0 : REGION_Y0 + REGION_ROWS, REGION_X0 : REGION_X0 + REGION_COLS] = region
    for k in range(int(g.integers(8, 16))):  # "text" outside the region
        r0, c0 = int(g.integers(3, 14)), 4 + 7 * k + int(g.integers(0, 3))
        if c0 + 5 < FRAME_COLS:
            out[:, r0 : r0 + 6, c0 : c0 + 4] = 230
            out[:, r0 + 2 : r0 + 4, c0 + 1 : c0 + 3] = 0
    out[:, FRAME_ROWS - 6 : FRAME_ROWS - 4, 20 : 20 + int(g.integers(20, 60))] = 200  # depth scale
    if colour_marks:
        r, c = REGION_Y0 + 3, REGION_X0 + 4  # green orientation mark inside the region
        out[:, r : r + 7, c : c + 2] = (40, 220, 60)
        out[:, r + 5 : r + 7, c : c + 6] = (40, 220, 60)
    if g.random() < 0.5:  # a caliper cross inside the region
        r, c = REGION_Y0 + int(g.integers(20, 90)), REGION_X0 + int(g.integers(10, 130))
        out[:, r, c - 3 : c + 4] = 255
        out[:, r - 3 : r + 4, c] = 255
    return out


def case_dataset(case: JointCase, *, doppler: bool, cine: bool, instance_number: int = 1) -> Dataset:
    """One case as a vendor-style US Image (still) or US Multi-frame Image (cine)."""
    g = T.rng(case.seed + 17)
    frames, _ = render(case, doppler=doppler, n_frames=CINE_FRAMES if cine else 1)
    rgb_grey = doppler or g.random() < 0.5
    display = _display(frames, g, colour_marks=rgb_grey)
    if not rgb_grey:
        display = display[..., 0]
    manufacturer, model, probe = VENDORS[int(g.integers(0, len(VENDORS)))]
    regions = [W.UsRegion(REGION_X0, REGION_Y0, REGION_X0 + REGION_COLS - 1, REGION_Y0 + REGION_ROWS - 1,
                          MM_PER_PX / 10, MM_PER_PX / 10)]
    if doppler:
        regions.append(W.UsRegion(REGION_X0 + 24, REGION_Y0 + 4, REGION_X0 + REGION_COLS - 25,
                                  REGION_Y0 + 84, MM_PER_PX / 10, MM_PER_PX / 10,
                                  data_type=W.REGION_COLOR_FLOW))
    body_part, token = JOINTS[case.joint]
    mode = ("PD " if doppler else "") + ("CINE" if cine else "")
    description = f"{token} {case.laterality} DORSAL LONG {mode}".strip()
    subject = W.Subject(patient_id=case.patient_id, patient_name="PHANTOM^RA",
                        study_uid=W.phantom_uid("ra-study", case.patient_id))
    common: dict[str, Any] = {"regions": regions, "doppler": doppler, "subject": subject, "anatomy": "MUSCULOSKELETAL",
                  "body_part": body_part, "laterality": case.laterality, "series_description": description,
                  "manufacturer": manufacturer, "model_name": model, "transducer": probe,
                  "series_uid": W.phantom_uid("ra-series", case.case_id, str(doppler), str(cine)),
                  "instance_number": instance_number,
                  "sop_instance_uid": W.phantom_uid("ra-image", case.case_id, str(doppler), str(cine))}
    if cine:
        ds = W.us_cine(display, FRAME_TIME_MS, **common)
    else:
        ds = W.us_image(display[0], **common)
    ds.UltrasoundColorDataPresent = 1 if doppler else 0
    return W.with_file_meta(ds)


def _demo_case(seed: int, variant: str) -> JointCase:
    """An inflamed MCP2 joint (GS 2, PD 3: combined grade 3), one id per variant."""
    return JointCase(case_id=f"demo-{variant}-{seed}", patient_id="PH-RADEMO", joint="MCP2", laterality="R",
                     gs=2, pd=3, combined=3, readers=(3, 3), seed=seed + 1000)


def demo_series(seed: int = 0) -> list[Dataset]:
    """One static power Doppler image of an inflamed MCP joint (combined grade 3), for the demo (SPD)."""
    return [case_dataset(_demo_case(seed, "spd"), doppler=True, cine=False)]


def demo_series_sgs(seed: int = 0) -> list[Dataset]:
    """One static greyscale image of the demo joint (SGS: still, no colour flow)."""
    return [case_dataset(_demo_case(seed, "sgs"), doppler=False, cine=False)]


def demo_series_dgs(seed: int = 0) -> list[Dataset]:
    """A greyscale cine of the demo joint (DGS: multi-frame, no colour flow)."""
    return [case_dataset(_demo_case(seed, "dgs"), doppler=False, cine=True)]


def demo_series_dpd(seed: int = 0) -> list[Dataset]:
    """A power Doppler cine of the demo joint (DPD: multi-frame with a colour-flow region)."""
    return [case_dataset(_demo_case(seed, "dpd"), doppler=True, cine=True)]
