"""First metatarsophalangeal joint (MTP1) ultrasound phantoms: normal vs gout, three views.

Views (the gout study's): **dorsal** longitudinal (metatarsal head and proximal phalanx base,
extensor tendon, the dorsal recess), **medial** longitudinal (a flatter, longer metatarsal
head under thin soft tissue), **plantar** longitudinal (a thick flexor hallucis longus tendon
above the joint and a round sesamoid with its shadow). A normal joint shows a thin anechoic
hyaline cartilage band over the head with a sharp bony surface beneath and a bright recess fat
pad. An abnormal (gout) joint shows one to three of the OMERACT elementary lesions:

- **double contour sign**: a hyperechoic irregular band over the cartilage surface, parallel
  to the bone (urate on cartilage);
- **aggregates**: bright hyperechoic foci in the recess or soft tissue;
- **tophus**: a heterogeneous hyperechoic mass with an anechoic rim;
- **erosion**: an intra- and extra-articular cortical defect (a notch in the bone surface);
- **effusion**: an anechoic distended recess.

Written as vendor-style DICOM US (MONOCHROME2 or RGB) with region calibration, BodyPartExamined
FOOT, and the view in SeriesDescription ("MTP1 DORSAL LONG") and in the View Code Sequence
where the vendor writes one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.dataset import Dataset as Item
from pydicom.sequence import Sequence as DicomSequence

from train.phantoms import dicom_writer as W, toolkit as T
from train.phantoms.joint_us import (
    FRAME_COLS,
    FRAME_ROWS,
    MM_PER_PX,
    REGION_COLS,
    REGION_ROWS,
    REGION_X0,
    REGION_Y0,
    VENDORS,
    _bmode,
    _complex_speckle,
    _display,
)

VIEWS = ("dorsal", "medial", "plantar")
SIGNS = ("double_contour", "aggregates", "tophus", "erosion", "effusion")
LABELS = ("normal", "abnormal")

__all__ = ["FRAME_COLS", "FRAME_ROWS", "LABELS", "SIGNS", "VIEWS", "Mtp1Case", "case_dataset",
           "demo_series", "sample_cases"]


@dataclass(frozen=True)
class Mtp1Case:
    """One MTP1 image of one phantom patient: view, label and the gout signs drawn."""

    case_id: str
    patient_id: str
    view: str
    laterality: str
    abnormal: bool
    signs: tuple[str, ...]
    seed: int


def sample_cases(n_patients: int, seed: int, abnormal_share: float = 0.45) -> list[Mtp1Case]:
    """Each patient is normal or gouty and has one image per view (both feet's views mixed)."""
    g = T.rng(seed)
    out = []
    for p in range(n_patients):
        abnormal = bool(g.random() < abnormal_share)
        lat = str(g.choice(("L", "R")))
        for v in VIEWS:
            signs: tuple[str, ...] = ()
            if abnormal:
                k = int(g.integers(1, 4))
                signs = tuple(sorted(str(s) for s in g.choice(SIGNS, size=k, replace=False)))
            out.append(Mtp1Case(f"{seed}-{p:04d}-{v}", f"PH-GT{seed % 1000:03d}{p:04d}", v, lat,
                                abnormal, signs, int(g.integers(0, 2**31 - 1))))
    return out


def echo_map(case: Mtp1Case, g: np.random.Generator) -> np.ndarray:
    """The echogenicity map of one MTP1 view with the case's gout signs."""
    h, w = REGION_ROWS, REGION_COLS
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    x = np.arange(w, dtype=np.float64)
    xj = w / 2 + g.uniform(-10, 10)
    if case.view == "dorsal":
        ya, yb, dip, soft_top = 40 + g.uniform(-4, 4), 44 + g.uniform(-4, 4), g.uniform(16, 22), 12
    elif case.view == "medial":
        ya, yb, dip, soft_top = 30 + g.uniform(-4, 4), 34 + g.uniform(-4, 4), g.uniform(8, 12), 6
    else:
        ya, yb, dip, soft_top = 62 + g.uniform(-4, 4), 66 + g.uniform(-4, 4), g.uniform(12, 16), 30
    xa, xb, gap = xj - g.uniform(26, 34), xj + g.uniform(20, 26), g.uniform(2.5, 4)
    surf = np.full(w, np.inf)
    left, right = x <= xj - gap, x >= xj + gap
    t1 = np.clip((x[left] - xa) / (xj - gap - xa), 0, None)
    t2 = np.clip((xb - x[right]) / (xb - xj - gap), 0, None)
    surf[left] = np.where(x[left] > xa, ya + dip * t1**1.3, ya + 0.006 * (x[left] - xa) ** 2)
    surf[right] = np.where(x[right] < xb, yb + dip * t2**1.3, yb + 0.004 * (x[right] - xb) ** 2)
    if "erosion" in case.signs:
        xc, half, depth = xa + g.uniform(-6, 10), g.uniform(5, 8), g.uniform(6, 10)
        notch = np.clip(1 - ((x - xc) / half) ** 2, 0, None) * depth
        surf = surf + notch
    surf = np.minimum(surf, h - 6)
    floor = np.where(np.isfinite(surf), surf, max(surf[left][-1], surf[right][0]) + 4)
    line = ya + (cols - xa) * (yb - ya) / (xb - xa)

    echo = 0.45 + 0.08 * T.smooth_field((h, w), g, sigma_px=6)
    echo[rows < 3] = 2.0
    if case.view == "plantar":  # thick flexor tendon
        band = (rows > soft_top - 18) & (rows < soft_top - 4)
        echo = np.where(band, 1.3 * (1 + 0.45 * np.cos(2 * np.pi * rows / 2.3)), echo)
    elif case.view == "dorsal":
        band = (rows > soft_top) & (rows < soft_top + 6)
        echo = np.where(band, 1.2 * (1 + 0.45 * np.cos(2 * np.pi * rows / 2.3)), echo)
    span = (cols > xa) & (cols < xb)
    recess = span & (rows > line) & (rows < floor[None, :])
    if "effusion" in case.signs:
        height = g.uniform(7, 12)
        bulge = np.clip(1 - ((cols - (xa + xb) / 2) / ((xb - xa) / 2 + 6)) ** 2, 0, None)
        effusion = (rows > line - height * bulge) & (rows < floor[None, :]) & (bulge > 0)
        echo = np.where(effusion, 0.015, echo)
    else:
        echo = np.where(recess, 1.5, echo)
    # cartilage: anechoic band over the metatarsal head
    cart = left[None, :] & (rows >= surf[None, :] - 3.2) & (rows < surf[None, :] - 0.6) & (cols > xa - 34)
    echo = np.where(cart, 0.03, echo)
    if "double_contour" in case.signs:
        wobble = 0.6 * T.smooth_field((1, w), g, sigma_px=3)[0]
        dc = left[None, :] & (cols > xa - 34) & (np.abs(rows - (surf[None, :] - 3.8 + wobble[None, :])) < 1.3)
        echo = np.where(dc, 6.0, echo)
    if "tophus" in case.signs:
        cy, cx = ya - g.uniform(5, 10), xj + g.uniform(-12, 12)
        r = g.uniform(8, 12)
        blob = T.random_blob((h, w), g, center=(cy, cx), radius=r, irregularity=0.2)
        rim = T.random_blob((h, w), g, center=(cy, cx), radius=r + 2.0, irregularity=0.05) & ~blob
        echo = np.where(rim, 0.03, echo)
        echo = np.where(blob, 2.5 + 1.2 * T.smooth_field((h, w), g, sigma_px=1.5), echo)
    if "aggregates" in case.signs:
        for _ in range(int(g.integers(8, 16))):
            cy = g.uniform(ya - 14, ya + dip * 0.6)
            cx = g.uniform(xa - 6, xb + 6)
            echo = np.where(T.ellipse_mask((h, w), (cy, cx), (2.0, 1.5)), 6.0, echo)
    below = rows >= surf[None, :]
    echo = np.where(below, 0.03 * np.exp(-(rows - surf[None, :]) / 12), echo)
    echo = np.where(np.abs(rows - surf[None, :]) < 1.5, 5.0, echo)
    if case.view == "plantar":  # a sesamoid beneath the tendon, with its shadow
        sy, sx, sr = ya - 14, xa + g.uniform(-4, 8), g.uniform(5, 7)
        ses = T.ellipse_mask((h, w), (sy, sx), (sr, sr * 0.8))
        shadow = (np.abs(cols - sx) < sr * 0.9) & (rows > sy)
        echo = np.where(shadow & ~ses, echo * 0.15, echo)
        echo = np.where(ses & (rows < sy - sr * 0.5), 5.0, np.where(ses, 0.05, echo))
    deep_gap = ~np.isfinite(surf)[None, :] & (rows >= floor[None, :])
    return np.clip(np.where(deep_gap, 0.25, echo), 0, None)


def render(case: Mtp1Case) -> np.ndarray:
    """The calibrated region of one case, (REGION_ROWS, REGION_COLS) uint8 greyscale."""
    g = T.rng(case.seed)
    echo = echo_map(case, g)
    grey = _bmode(echo, _complex_speckle(echo.shape, g), g.uniform(0.85, 1.1))
    return np.rint(grey * 255).astype(np.uint8)


#: a private phantom scheme: the phantoms do not claim SNOMED codes they were not checked against
_VIEW_CODES = {v: (v.upper(), v) for v in VIEWS}


def case_dataset(case: Mtp1Case, instance_number: int = 1) -> Dataset:
    """One case as a vendor-style US Image Storage object."""
    g = T.rng(case.seed + 31)
    region = render(case)
    rgb = g.random() < 0.5
    display = _display(np.repeat(region[None, ..., None], 3, axis=3), g, colour_marks=rgb)[0]
    if not rgb:
        display = display[..., 0]
    manufacturer, model, probe = VENDORS[int(g.integers(0, len(VENDORS)))]
    regions = [W.UsRegion(REGION_X0, REGION_Y0, REGION_X0 + REGION_COLS - 1, REGION_Y0 + REGION_ROWS - 1,
                          MM_PER_PX / 10, MM_PER_PX / 10)]
    subject = W.Subject(patient_id=case.patient_id, patient_name="PHANTOM^GOUT",
                        study_uid=W.phantom_uid("gout-study", case.patient_id))
    ds = W.us_image(display, regions=regions, doppler=False, subject=subject, anatomy="MUSCULOSKELETAL",
                    body_part="FOOT", laterality=case.laterality,
                    series_description=f"MTP1 {case.laterality} {case.view.upper()} LONG",
                    manufacturer=manufacturer, model_name=model, transducer=probe,
                    series_uid=W.phantom_uid("gout-series", case.case_id),
                    instance_number=instance_number,
                    sop_instance_uid=W.phantom_uid("gout-image", case.case_id))
    ds.UltrasoundColorDataPresent = 0
    if g.random() < 0.5:  # some consoles code the view (View Code Sequence, PS3.3 C.8.5.6)
        code, meaning = _VIEW_CODES[case.view]
        item = Item()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "99PHANTOM", meaning
        ds.ViewCodeSequence = DicomSequence([item])
    return W.with_file_meta(ds)


def demo_series(seed: int = 0) -> list[Dataset]:
    """One static dorsal MTP1 image with gout signs (effusion, erosion, tophus), for the demo."""
    case = Mtp1Case(f"demo-{seed}", "PH-GTDEMO", "dorsal", "R", True, ("effusion", "erosion", "tophus"),
                    seed + 2000)
    return [case_dataset(case)]
