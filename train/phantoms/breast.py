"""Paired breast B-mode / strain-elastography phantoms for the virtual elastography model.

One `BreastCase` is a tissue map drawn once and rendered twice:

* **B-mode**: echogenicity per tissue (skin, subcutaneous fat lobules, Cooper's ligaments,
  fibroglandular tissue, retromammary fat, pectoralis with striations) and lesion, depth
  attenuation with partial TGC, posterior enhancement behind cysts and benign masses, an acoustic
  shadow behind shadowing masses, correlated speckle (PSF) and log compression.
* **Strain**: stiffness per tissue and lesion (fat softest, gland, ligaments, muscle, skin; lesions
  by their Tsukuba pattern), stress decaying with depth from the transducer, strain = stress /
  stiffness smoothed over the field (elastography's kernel), shown relative to the field's median
  as consoles do (`mapped`: 1 soft ... 0 hard) and colour-mapped soft red -> green -> hard blue
  (`models.elastography.transforms.colorize`).

Lesions and their Tsukuba elasticity scores (Itoh et al., Radiology 2006): 1 the whole lesion
strains like its surroundings; 2 most of it strains, with stiff patches (mosaic); 3 only the
periphery strains, the centre is stiff; 4 the whole lesion is stiff; 5 the lesion and its
surroundings are stiff. Kinds: "benign" (oval, circumscribed, parallel; scores 1-3), "malignant"
(irregular, spiculated, echogenic halo; 3-5), "cyst" (anechoic, posterior enhancement, the
layered blue-green-red strain artefact; score 1), "shadowing" (posterior acoustic shadow; 4-5),
and "normal" (no lesion; score 0 = not applicable).

**Elastography box.** Vendor strain elastography shows the map only inside an ROI box the
operator places around the lesion, B-mode outside, strain relative to the box: `strain_box`
is that box for a phantom (the lesion's bounds grown as `models.elastography.box.grow_box`
grows the model's candidate; the central default box without a lesion) and `console_emode`
the console's view (the paired target's colour inside the box, relative to it, B-mode outside).

`demo_series(seed)` writes one breast B-mode image series as DICOM US (console frame with the
B-mode region, US Region Calibration, vendor-style headers) for `sidecar demo` and the tests.
Everything is seeded and vectorised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from scipy import ndimage

from models.elastography.box import StrainBox, default_box, grow_box, relative_to_box
from models.elastography.transforms import colorize
from train.phantoms import toolkit as tk
from train.phantoms.dicom_writer import (
    Subject,
    UsRegion,
    phantom_uid,
    us_image,
    with_file_meta,
)

KINDS: tuple[str, ...] = ("normal", "benign", "malignant", "cyst", "shadowing")
#: share of each kind in a cohort
KIND_WEIGHTS: tuple[float, ...] = (0.12, 0.34, 0.30, 0.12, 0.12)
#: Tsukuba score distribution per kind (scores 1..5)
_SCORE_P: dict[str, tuple[float, float, float, float, float]] = {
    "benign": (0.30, 0.45, 0.25, 0.0, 0.0),
    "malignant": (0.0, 0.0, 0.10, 0.40, 0.50),
    "cyst": (1.0, 0.0, 0.0, 0.0, 0.0),
    "shadowing": (0.0, 0.0, 0.0, 0.50, 0.50),
}
# Relative Young's moduli (fat = 1); breast fat ~ 3-20 kPa, glandular tissue 2-3x, carcinoma 10x+.
_E = {"fat": 1.0, "gland": 2.6, "ligament": 4.0, "skin": 5.0, "muscle": 3.2}
_ECHO = {"fat": 0.07, "gland": 1.0, "ligament": 4.0, "skin": 2.5, "muscle": 0.25}
#: the field of the mapped display: strain ratios within 1/RANGE .. RANGE of the median
STRAIN_DISPLAY_RANGE = 6.0


@dataclass(frozen=True)
class BreastCase:
    """One paired phantom at the B-mode region's size (rows, cols).

    `bmode` in [0, 1] (display grey), `mapped` the relative strain display in [0, 1]
    (1 soft, 0 hard), `emode` the console's colour strain image (uint8 RGB), `lesion` the
    lesion mask, `tsukuba` 1-5 (0: no lesion), `delta_cm` the pixel size (row, col).
    """

    bmode: npt.NDArray[np.float64]
    mapped: npt.NDArray[np.float64]
    emode: npt.NDArray[np.uint8]
    lesion: npt.NDArray[np.bool_]
    kind: str
    tsukuba: int
    seed: int
    patient_id: str
    delta_cm: tuple[float, float]


def _smooth(shape: tuple[int, int], g: np.random.Generator, sigma_px: float) -> npt.NDArray[np.float64]:
    """A fast `toolkit.smooth_field`: coarse noise smoothed, then upsampled (zero mean, unit SD)."""
    step = max(1.0, sigma_px / 3.0)
    coarse = (max(4, int(np.ceil(shape[0] / step)) + 1), max(4, int(np.ceil(shape[1] / step)) + 1))
    field = ndimage.gaussian_filter(g.standard_normal(coarse), sigma_px / step, mode="wrap")
    up = ndimage.zoom(field, (shape[0] / coarse[0], shape[1] / coarse[1]), order=1, grid_mode=True,
                      mode="nearest")[: shape[0], : shape[1]]
    sd = up.std()
    return np.asarray((up - up.mean()) / (sd if sd > 0 else 1.0), dtype=np.float64)


def _layers(shape: tuple[int, int], g: np.random.Generator, px_mm: float) -> dict[str, npt.NDArray[np.bool_]]:
    """Skin, subcutaneous fat, gland, retromammary fat and muscle as masks, wavy boundaries."""
    h, w = shape
    cols = np.arange(w)

    def boundary(mean_mm: float, wobble_mm: float) -> npt.NDArray[np.float64]:
        k = g.uniform(0.5, 2.5)
        phase = g.uniform(0, 2 * np.pi)
        wav = np.sin(2 * np.pi * k * cols / w + phase) + 0.4 * _smooth((2, w), g, w / 12)[0]
        return (mean_mm + wobble_mm * wav) / px_mm

    skin = boundary(g.uniform(1.6, 2.6), 0.15)
    fat = boundary(g.uniform(5, 11), 1.8)
    gland = boundary(g.uniform(22, 32), 3.0)
    retro = gland + g.uniform(2, 5) / px_mm
    rows = np.arange(h)[:, None]
    out = {
        "skin": rows < skin[None, :],
        "fat": (rows >= skin[None, :]) & (rows < fat[None, :]),
        "gland": (rows >= fat[None, :]) & (rows < gland[None, :]),
        "retro": (rows >= gland[None, :]) & (rows < retro[None, :]),
        "muscle": rows >= retro[None, :],
    }
    # fat lobules intrude into the gland: the interface is lumpy, not a line
    lobules = _smooth(shape, g, 3.0 / px_mm) > 0.9
    lobules &= out["gland"]
    out["gland"] &= ~lobules
    out["fat"] |= lobules
    return out


def _ligaments(shape: tuple[int, int], g: np.random.Generator, region: npt.NDArray[np.bool_],
               px_mm: float) -> npt.NDArray[np.bool_]:
    """Cooper's ligaments: thin oblique curved bright bands through the subcutaneous fat."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    lig = np.zeros(shape, dtype=bool)
    for _ in range(int(g.integers(2, 6))):
        c0 = g.uniform(0, w)
        slope = g.uniform(-1.2, 1.2)
        curve = g.uniform(-0.004, 0.004) * px_mm
        centre = c0 + slope * rows + curve * (rows - h / 3) ** 2
        lig |= np.abs(cols - centre) < g.uniform(0.25, 0.5) / px_mm
    return lig & region


def _lesion_mask(shape: tuple[int, int], g: np.random.Generator, kind: str, px_mm: float,
                 top_row: float) -> tuple[npt.NDArray[np.bool_], tuple[float, float], float]:
    """(mask, centre, radius px) of a lesion of `kind` below the subcutaneous fat."""
    h, w = shape
    radius = g.uniform(4.5, 10.0) / px_mm if kind != "cyst" else g.uniform(3.0, 7.5) / px_mm
    low = min(max(top_row + radius * 1.1, 0.3 * h), 0.55 * h)
    centre = (g.uniform(low, 0.62 * h), g.uniform(0.3, 0.7) * w)
    if kind == "malignant":
        mask = tk.random_blob(shape, g, center=centre, radius=radius, irregularity=0.45, harmonics=9)
        # spicules: thin radial spokes
        rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
        theta = np.arctan2(rows - centre[0], cols - centre[1])
        r = np.hypot(rows - centre[0], cols - centre[1])
        for angle in g.uniform(-np.pi, np.pi, int(g.integers(4, 10))):
            d = np.abs(np.angle(np.exp(1j * (theta - angle))))
            mask |= (d < 0.06) & (r < radius * g.uniform(1.3, 1.8))
    elif kind == "shadowing":
        mask = tk.random_blob(shape, g, center=centre, radius=radius, irregularity=0.3, harmonics=6)
    else:  # benign: oval, wider than tall (parallel); cyst: round, smooth
        aspect = g.uniform(1.3, 1.9) if kind == "benign" else g.uniform(1.0, 1.25)
        mask = tk.ellipse_mask(shape, centre, (radius * aspect, radius), g.uniform(-0.2, 0.2))
    return tk.bool_array(mask), centre, float(radius)


def _stiffness(tissue_e: npt.NDArray[np.float64], lesion: npt.NDArray[np.bool_], score: int,
               g: np.random.Generator, px_mm: float) -> npt.NDArray[np.float64]:
    """The stiffness map with the lesion drawn by its Tsukuba pattern."""
    e = tissue_e.copy()
    if not lesion.any():
        return e
    background = float(np.median(tissue_e[ndimage.binary_dilation(lesion, iterations=6) & ~lesion]))
    depth = ndimage.distance_transform_edt(lesion)
    if score == 1:
        e[lesion] = background * g.uniform(0.9, 1.3)
    elif score == 2:
        patches = _smooth(lesion.shape, g, 1.2 / px_mm) > 0.55
        e[lesion] = background * g.uniform(1.3, 2.0)
        e[lesion & patches] = background * g.uniform(5, 8)
    elif score == 3:
        rim = depth < max(2.0, 0.35 * depth.max())
        e[lesion] = background * g.uniform(7, 11)
        e[lesion & rim] = background * g.uniform(1.0, 1.6)
    elif score == 4:
        e[lesion] = background * g.uniform(8, 14)
    elif score == 5:
        halo = ndimage.binary_dilation(lesion, iterations=int(g.uniform(3, 6) / px_mm)) & ~lesion
        e[halo] = np.maximum(e[halo], background * g.uniform(4, 7))
        e[lesion] = background * g.uniform(10, 16)
    return e


def _mapped_strain(e: npt.NDArray[np.float64], g: np.random.Generator, px_mm: float,
                   cyst: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.float64]:
    """Relative strain display in [0, 1]: stress / stiffness smoothed, over the field's median."""
    h, _ = e.shape
    depth = np.arange(h, dtype=np.float64)[:, None] / h
    stress = np.exp(-depth * g.uniform(0.6, 1.2))  # compression decays away from the probe
    # log-domain smoothing: the estimator averages displacement gradients over a kernel
    log_strain = np.log(stress) - np.log(e)
    log_strain = ndimage.gaussian_filter(log_strain, (1.2 / px_mm, 1.6 / px_mm), mode="nearest")
    log_strain += 0.08 * _smooth(e.shape, g, 2.0 / px_mm)  # estimator noise
    rel = log_strain - np.median(log_strain)
    mapped = 0.5 + rel / (2 * np.log(STRAIN_DISPLAY_RANGE))
    if cyst is not None and cyst.any():
        # the cyst's layered (blue-green-red) artefact: hard on top, soft at the bottom
        rows = np.nonzero(cyst.any(axis=1))[0]
        t = (np.arange(h, dtype=np.float64)[:, None] - rows[0]) / max(rows[-1] - rows[0], 1)
        layered = np.broadcast_to(0.08 + 0.9 * np.clip(t, 0, 1), e.shape)
        soft = ndimage.gaussian_filter(cyst.astype(np.float64), 0.8 / px_mm)
        mapped = mapped * (1 - soft) + layered * soft
    return np.clip(mapped, 0.0, 1.0)


def _bmode(tissues: dict[str, npt.NDArray[np.bool_]], lig: npt.NDArray[np.bool_],
           lesion: npt.NDArray[np.bool_], kind: str, g: np.random.Generator,
           px_mm: float) -> npt.NDArray[np.float64]:
    """B-mode display image in [0, 1]."""
    shape = lesion.shape
    h, w = shape
    echo = np.zeros(shape)
    for name in ("skin", "fat", "gland", "muscle"):
        echo[tissues[name]] = _ECHO[name]
    echo[tissues["retro"]] = _ECHO["fat"]
    echo *= np.exp(0.35 * _smooth(shape, g, 2.0 / px_mm))  # texture
    # pectoralis striations, Cooper's ligaments
    rows = np.arange(h)[:, None]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * rows * px_mm / g.uniform(1.5, 2.5))
    echo[tissues["muscle"]] *= (0.6 + 0.9 * stripes * np.ones((1, w)))[tissues["muscle"]]
    echo[lig] = _ECHO["ligament"]
    below = np.zeros(shape)
    if lesion.any():
        lcols = np.nonzero(lesion.any(axis=0))[0]
        bottom = np.nonzero(lesion.any(axis=1))[0][-1]
        column = np.zeros(shape, dtype=bool)
        column[bottom:, lcols[0] : lcols[-1] + 1] = True
        below = ndimage.gaussian_filter(column.astype(np.float64), (1.0, 1.0 / px_mm))
        if kind == "cyst":
            echo[lesion] = 0.0003
            echo *= 1 + 0.9 * below  # posterior enhancement
        elif kind == "benign":
            echo[lesion] = 0.025 * np.exp(0.15 * _smooth(shape, g, 1.0 / px_mm))[lesion]
            echo *= 1 + 0.35 * below
        else:
            het = np.exp(0.5 * _smooth(shape, g, 0.7 / px_mm))
            echo[lesion] = (0.02 * het)[lesion]
            if kind == "malignant":  # echogenic halo
                halo = ndimage.binary_dilation(lesion, iterations=max(1, int(1.2 / px_mm))) & ~lesion
                echo[halo] *= 1.8
            echo *= 1 - (0.55 if kind == "malignant" else 0.85) * below  # posterior shadow
    depth_cm = np.arange(h)[:, None] * px_mm / 10.0
    # attenuation 0.75 dB/cm/MHz at 7.5 MHz, round trip, 80 % compensated by the TGC
    echo *= 10 ** (-(0.2 * 2 * 0.75 * 7.5 * depth_cm) / 10)
    env = tk.correlated_speckle(echo, g, axial_sigma_px=0.25 / px_mm, lateral_sigma_px=0.45 / px_mm)
    img = tk.log_compress(env, dynamic_range_db=g.uniform(42, 50))
    return np.clip(img * g.uniform(0.95, 1.1), 0, 1)


def breast_case(seed: int, kind: str | None = None, shape: tuple[int, int] | None = None,
                depth_cm: float | None = None, patient_id: str | None = None) -> BreastCase:
    """One paired phantom from `seed`; `kind` and the region shape are drawn when not given."""
    g = tk.rng(seed)
    if kind is None:
        kind = str(g.choice(KINDS, p=KIND_WEIGHTS))
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if shape is None:
        shape = (int(g.integers(300, 440)), int(g.integers(320, 480)))
    depth = depth_cm if depth_cm is not None else float(g.uniform(3.5, 4.5))
    px_mm = depth * 10.0 / shape[0]  # square pixels
    tissues = _layers(shape, g, px_mm)
    lig = _ligaments(shape, g, tissues["fat"] | tissues["gland"], px_mm)
    e = np.zeros(shape)
    for name in ("skin", "fat", "gland", "muscle"):
        e[tissues[name]] = _E[name]
    e[tissues["retro"]] = _E["fat"]
    e[lig] = _E["ligament"]
    e *= np.exp(0.15 * _smooth(shape, g, 2.0 / px_mm))
    score = 0
    if kind == "normal":
        lesion = np.zeros(shape, dtype=bool)
    else:
        skin_rows = np.nonzero(tissues["skin"].any(axis=1))[0]
        lesion, _, _ = _lesion_mask(shape, g, kind, px_mm, float(skin_rows.max(initial=0)) + 6 / px_mm)
        score = int(g.choice(np.arange(1, 6), p=_SCORE_P[kind]))
    e = _stiffness(e, lesion, score, g, px_mm)
    mapped = _mapped_strain(e, g, px_mm, lesion if kind == "cyst" else None)
    bmode = _bmode(tissues, lig, lesion, kind, g, px_mm)
    return BreastCase(bmode=bmode, mapped=mapped, emode=colorize(mapped), lesion=lesion, kind=kind,
                      tsukuba=score, seed=seed, patient_id=patient_id or f"PH-BR{seed:06d}",
                      delta_cm=(px_mm / 10.0, px_mm / 10.0))


def strain_box(case: BreastCase) -> StrainBox:
    """The elastography box an operator would place: around the lesion, central without one."""
    shape = (int(case.bmode.shape[0]), int(case.bmode.shape[1]))
    if not case.lesion.any():
        return default_box(shape)
    ys, xs = np.nonzero(case.lesion)
    return grow_box(float(ys.min()), float(xs.min()), float(ys.max()), float(xs.max()), shape)


def console_emode(case: BreastCase, alpha: float = 0.65) -> npt.NDArray[np.uint8]:
    """The console's strain elastography view of `case` (region-sized RGB): colour inside the
    box, relative to the box's median strain, blended over the B-mode; B-mode outside."""
    box = strain_box(case)
    out = np.repeat((np.clip(case.bmode, 0, 1) * 255.0)[..., None], 3, axis=2)
    sl = box.slices()
    colour = colorize(relative_to_box(case.mapped, box)).astype(np.float64)
    out[sl] = alpha * colour[sl] + (1.0 - alpha) * out[sl]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def breast_cohort(n: int, seed: int = 0) -> list[BreastCase]:
    """`n` cases with kinds in the cohort mix; case i is `breast_case(seed * 100003 + i)`."""
    return [breast_case(seed * 100_003 + i) for i in range(n)]


# --- DICOM -------------------------------------------------------------------------------------

#: vendor-style console frames: (manufacturer, model, transducer, frame rows, cols, colour, description)
VENDORS: tuple[tuple[str, str, str, int, int, bool, str], ...] = (
    ("GE Healthcare", "LOGIQ E10", "ML6-15-D", 600, 800, True, "BREAST"),
    ("Hitachi Aloka", "ARIETTA 850", "L64", 576, 768, False, "Breast B-mode"),
    ("SIEMENS", "ACUSON Sequoia", "18L6", 600, 800, True, "BREAST US"),
)


def console_frame(case: BreastCase, rows: int, cols: int, colour: bool,
                  g: np.random.Generator) -> tuple[npt.NDArray[np.uint8], UsRegion]:
    """The console's screen: the B-mode region placed in a frame, a depth scale and text blocks
    outside it (burned-in annotation the front end must crop away)."""
    h, w = case.bmode.shape
    if h + 40 > rows or w + 40 > cols:
        raise ValueError(f"a {h}x{w} region does not fit a {rows}x{cols} frame")
    y0 = int(g.integers(40, rows - h))
    x0 = int((cols - w) // 2 + g.integers(-20, 21))
    frame = np.zeros((rows, cols), dtype=np.uint8)
    frame[y0 : y0 + h, x0 : x0 + w] = tk.to_uint(case.bmode, bits=8, lo=0.0, hi=1.0)
    frame[8:24, 10:180] = 200  # a "text" block (patient banner stand-in, no real text)
    for tick in range(y0, y0 + h, max(1, int(round(0.5 / case.delta_cm[0])))):
        frame[tick, min(cols - 1, x0 + w + 6) : min(cols, x0 + w + 14)] = 255  # depth ticks
    region = UsRegion(x0, y0, x0 + w - 1, y0 + h - 1, case.delta_cm[1], case.delta_cm[0],
                      reference_pixel=(w // 2, 0))
    pixels = np.repeat(frame[..., None], 3, axis=2) if colour else frame
    return pixels, region


def bmode_dataset(case: BreastCase, *, subject: Subject, series_uid: str, instance: int,
                  vendor: int = 0, laterality: str = "L") -> Dataset:
    """`case` as a US Image Storage object in the style of `VENDORS[vendor]`, with file meta
    (Explicit VR Little Endian) so it can be written or sent as it is."""
    manufacturer, model, probe, rows, cols, colour, desc = VENDORS[vendor % len(VENDORS)]
    g = tk.rng(case.seed + 7)
    pixels, region = console_frame(case, rows, cols, colour, g)
    ds = us_image(pixels, regions=[region], doppler=False, subject=subject, anatomy="BREAST",
                  body_part="BREAST", laterality=laterality,
                  series_description=desc, manufacturer=manufacturer, model_name=model,
                  transducer=probe, series_uid=series_uid, series_number=3,
                  instance_number=instance,
                  sop_instance_uid=phantom_uid(series_uid, "instance", str(instance)))
    return with_file_meta(ds)  # so it can be sent as is (C-STORE needs the transfer syntax)


def demo_series(seed: int = 0, kinds: Sequence[str] = ("malignant", "benign")) -> list[Dataset]:
    """One breast B-mode US series (one image per kind) for `sidecar demo` and the tests."""
    subject = Subject(patient_id=f"PH-BR{seed:04d}", patient_name="PHANTOM^BREAST",
                      patient_sex="F", study_uid=phantom_uid("breast-study", str(seed)),
                      accession_number=f"PHBR{seed:04d}", study_description="US BREAST PHANTOM")
    series_uid = phantom_uid("breast-series", str(seed))
    return [bmode_dataset(breast_case(seed * 1000 + i, kind=k), subject=subject,
                          series_uid=series_uid, instance=i + 1, vendor=seed)
            for i, k in enumerate(kinds)]


__all__ = ["KINDS", "BreastCase", "bmode_dataset", "breast_case", "breast_cohort", "console_emode",
           "console_frame", "demo_series", "strain_box"]
