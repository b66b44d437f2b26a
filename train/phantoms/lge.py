"""Synthetic short-axis PSIR LGE slices, two simulated readers' VAS scores, and vendor-style DICOM.

Anatomy (in mm, on the scanner's pixel grid): an elliptical body with subcutaneous fat, two
lungs, liver, the left ventricle (blood pool, myocardial ring 7-12 mm thick, smaller towards the
apex), the right ventricle (a crescent of blood with a thin wall) and some epicardial fat.

Signal is the PSIR *real* image after gadolinium, blood ~1.0: nulled myocardium ~0, blood, fat
and scar positive, lung near zero; long-T1 tissue slightly negative. Noise is Gaussian on the real
image (the real channel of complex noise) and Rician on the magnitude companion, which is what
the scanner's MAG series is. A smooth coil bias field multiplies both.

Slice kinds and the readers' latent LGE evidence (0-100, each reader adds N(0, sd) noise):

- ``no_lge``: clean slice, good nulling, evidence 0-8 -> both readers <= 20, high certainty.
- ``lge``: a bright (0.8-1.2 x blood) segment of 45-120 degrees reaching at least half the wall
  (subendocardial to transmural), evidence 90-100 -> high certainty.
- the confusers, evidence 30-65 -> low certainty: ``faint_lge`` (0.2-0.45 x blood, mid-wall or
  patchy), ``thin_lge`` (a grey 2-3.5 mm subendocardial rim, 0.4-0.7 x blood, between the
  bright blood pool and the nulled wall), ``ghosting`` (respiratory ghosts along the
  phase-encode axis, blur), ``poor_nulling`` (myocardium at 0.25-0.5 x blood: TI too long) and
  ``low_snr`` (noise SD 0.15-0.3).

Domain randomisation, per patient (`Anatomy`): heart position (+-20 mm off centre), field of view
(matrix 160-256, pixels 1.0-1.9 mm), vendor-like PSIR scaling (300-2200 stored units per unit
of blood; Philips rescale slopes; each vendor's window centre/width habit), coil bias field
strength, partial-volume blur and baseline noise. Clear and confuser slices share all of it, so
only the enhancement and artefact pattern tells them apart.

Labels come from `models.lge_qa.labels` (the rule the model card states), never from the kind.
DICOM: Siemens "<name>_PSIR" / "<name>_MAG" series pairs (unsigned, intercept -4096), Philips
R_IR / M_IR image types (signed pixels), GE "MDE PSIR" with the raw-data-type private element,
an Enhanced MR multi-frame, and TI scout series, all with fake patient data.
The shared toolkit (`train.phantoms.toolkit`) provides noise and bias field. No shared DICOM
writer existed when this was written, so the minimal MR builder lives here (`psir_dataset`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage
from scipy import ndimage

from models.lge_qa.labels import VasBounds, certainty_label
from train.phantoms.dicom_writer import file_meta
from train.phantoms.toolkit import bias_field, gaussian_noise, rician_noise

CLEAR_KINDS = ("no_lge", "lge")
CONFUSER_KINDS = ("faint_lge", "thin_lge", "ghosting", "poor_nulling", "low_snr")
KINDS = CLEAR_KINDS + CONFUSER_KINDS
#: the share of each kind in `lge_cohort`
DEFAULT_MIX: dict[str, float] = {
    "no_lge": 0.33,
    "lge": 0.30,
    "faint_lge": 0.08,
    "thin_lge": 0.08,
    "ghosting": 0.07,
    "poor_nulling": 0.07,
    "low_snr": 0.07,
}
SIGNAL_SCALE = 1000.0  # stored units per unit of blood signal
VENDORS = ("siemens", "philips", "ge")


@dataclass(frozen=True)
class Anatomy:
    """One patient's heart and body, in mm relative to the image centre (row, column)."""

    heart_offset: tuple[float, float]
    endo_radius: float
    wall: float
    ellipticity: float
    rv_width: float
    body_axes: tuple[float, float]
    blood: float
    scar_start: float  # radians
    scar_width: float  # radians
    pixel_spacing: float
    matrix: int
    signal_scale: float = SIGNAL_SCALE  # stored units per unit of blood signal
    bias_strength: float = 0.2
    blur: float = 0.6  # partial-volume Gaussian sigma, pixels
    noise: tuple[float, float] = (0.02, 0.05)  # baseline noise SD range (blood = 1)


@dataclass(frozen=True)
class LgeSlice:
    """One phantom slice: signed PSIR signal, magnitude companion, truth and reader scores."""

    psir: np.ndarray  # float32 (rows, columns), blood ~ the anatomy's signal_scale
    magnitude: np.ndarray  # float32, >= 0
    pixel_spacing: float  # mm, square pixels
    kind: str
    vas: tuple[float, float]
    label: str
    patient_id: str
    slice_index: int = 0
    slice_location: float = 0.0
    inversion_time_ms: float = 300.0
    extra: dict[str, float] = field(default_factory=dict)


def random_anatomy(generator: np.random.Generator) -> Anatomy:
    """A patient: heart size and place, wall thickness, body, blood level, scar territory, grid."""
    noise_low = float(generator.uniform(0.015, 0.04))
    return Anatomy(
        heart_offset=(float(generator.uniform(-20, 20)), float(generator.uniform(-20, 20))),
        endo_radius=float(generator.uniform(18, 27)),
        wall=float(generator.uniform(7, 12)),
        ellipticity=float(generator.uniform(0.9, 1.1)),
        rv_width=float(generator.uniform(10, 18)),
        body_axes=(float(generator.uniform(95, 125)), float(generator.uniform(140, 175))),
        blood=float(generator.uniform(0.85, 1.15)),
        scar_start=float(generator.uniform(0, 2 * np.pi)),
        scar_width=float(np.deg2rad(generator.uniform(45, 120))),
        pixel_spacing=float(generator.uniform(1.0, 1.9)),
        matrix=int(generator.choice([160, 192, 208, 224, 256])),
        signal_scale=float(np.exp(generator.uniform(np.log(300.0), np.log(2200.0)))),
        bias_strength=float(generator.uniform(0.05, 0.4)),
        blur=float(generator.uniform(0.4, 1.0)),
        noise=(noise_low, noise_low + float(generator.uniform(0.01, 0.03))),
    )


def _angle_in(theta: np.ndarray, start: float, width: float) -> np.ndarray:
    return np.mod(theta - start, 2 * np.pi) <= width


def _ghosts(image: np.ndarray, generator: np.random.Generator, amplitude: float, axis: int) -> np.ndarray:
    """Respiratory ghosts: attenuated, shifted copies along the phase-encode axis, plus blur."""
    out = ndimage.gaussian_filter1d(image, generator.uniform(0.8, 2.0) * amplitude * 4, axis=axis)
    n = image.shape[axis]
    for k in (1, 2):
        shift = int(n * generator.uniform(0.08, 0.2) * k)
        out = out + ((-1) ** k) * amplitude / k * np.roll(image, shift, axis=axis)
    return out


def lge_slice(
    generator: np.random.Generator,
    kind: str,
    anatomy: Anatomy | None = None,
    *,
    patient_id: str = "PHANTOM-0",
    slice_index: int = 0,
    apex_fraction: float = 0.3,
    bounds: VasBounds = VasBounds(),
) -> LgeSlice:
    """One slice of `kind` (see the module docstring); `apex_fraction` 0 = base, 1 = apex."""
    if kind not in KINDS:
        raise ValueError(f"unknown slice kind {kind!r}; one of {KINDS}")
    a = anatomy or random_anatomy(generator)
    n, ps = a.matrix, a.pixel_spacing
    coords = (np.arange(n, dtype=np.float64) - (n - 1) / 2) * ps
    y, x = np.meshgrid(coords, coords, indexing="ij")

    # body, fat, lungs, liver
    by, bx = a.body_axes
    body_r = np.hypot(y / by, x / bx)
    img = np.where(body_r <= 1.0, 0.12, 0.0)
    img = np.where((body_r > 0.9) & (body_r <= 1.0), 0.85, img)  # subcutaneous fat
    cy, cx = a.heart_offset
    for side in (-1, 1):
        lung = np.hypot((y - cy + 5) / (by * 0.6), (x - cx - side * bx * 0.5) / (bx * 0.33)) <= 1
        img = np.where(lung & (body_r < 0.88), 0.02, img)
    liver = np.hypot((y - by * 0.55) / (by * 0.35), (x + bx * 0.35) / (bx * 0.45)) <= 1
    img = np.where(liver & (body_r < 0.9), 0.3, img)

    # heart: LV ring and blood, RV crescent, epicardial fat
    scale = 1.0 - 0.45 * apex_fraction
    endo, wall = a.endo_radius * scale, a.wall * (1.0 - 0.2 * apex_fraction)
    dy, dx = (y - cy) / a.ellipticity, x - cx
    r = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    epi = endo + wall
    rv_cx = cx - epi - a.rv_width * 0.5
    rv = np.hypot((y - cy) / (epi * 1.3), (x - rv_cx) / (a.rv_width + epi * 0.5)) <= 1
    rv_blood = rv & (r > epi + 3)
    img = np.where((r <= epi + 5) & (r > epi + 2) & ~rv, 0.7, img)  # epicardial fat
    img = np.where(rv, 0.0, img)
    img = np.where(rv_blood, a.blood, img)
    img = np.where(r <= endo, a.blood, img)
    myo = (r > endo) & (r <= epi)
    myo_level = float(generator.normal(0.0, 0.03))
    if kind == "poor_nulling":
        myo_level = float(generator.uniform(0.25, 0.5))
    img = np.where(myo, myo_level, img)

    # enhancement
    depth = (r - endo) / wall  # 0 at the endocardium, 1 at the epicardium
    in_sector = _angle_in(theta, a.scar_start, a.scar_width * (1 - 0.3 * apex_fraction))
    if kind == "lge":
        transmural = generator.uniform(0.5, 1.0) if generator.random() < 0.6 else 1.0
        scar = myo & in_sector & (depth <= transmural)
        img = np.where(scar, a.blood * generator.uniform(0.8, 1.2), img)
    elif kind == "thin_lge":
        rim = generator.uniform(2.0, 3.5) / wall
        scar = myo & in_sector & (depth <= rim)
        img = np.where(scar, a.blood * generator.uniform(0.4, 0.7), img)
    elif kind == "faint_lge":
        level = a.blood * generator.uniform(0.2, 0.45)
        if generator.random() < 0.5:  # mid-wall stripe
            scar = myo & in_sector & (depth > 0.3) & (depth < 0.7)
        else:  # patchy
            patches = ndimage.gaussian_filter(generator.standard_normal((n, n)), 3.0 / ps)
            scar = myo & in_sector & (patches > np.quantile(patches[myo], 0.6))
        img = np.where(scar, level, img)

    clean = ndimage.gaussian_filter(img, a.blur)  # partial volume
    if kind == "ghosting":
        clean = _ghosts(clean, generator, float(generator.uniform(0.2, 0.4)), axis=int(generator.integers(2)))
    else:
        clean = _ghosts(clean, generator, float(generator.uniform(0.0, 0.04)), axis=0)
    clean = clean * bias_field((n, n), generator, strength=a.bias_strength)
    sigma = float(generator.uniform(0.15, 0.3) if kind == "low_snr" else generator.uniform(*a.noise))
    psir = gaussian_noise(clean, generator, sigma=sigma)
    magnitude = rician_noise(np.abs(clean), generator, sigma=sigma)

    if kind == "no_lge":
        evidence = generator.uniform(0, 8)
    elif kind == "lge":
        evidence = generator.uniform(90, 100)
    else:
        evidence = generator.uniform(30, 65)
    sd = 5.0 if kind in CLEAR_KINDS else 10.0
    vas = tuple(float(np.clip(evidence + generator.normal(0, sd), 0, 100)) for _ in range(2))
    return LgeSlice(
        psir=(psir * a.signal_scale).astype(np.float32),
        magnitude=(magnitude * a.signal_scale).astype(np.float32),
        pixel_spacing=ps,
        kind=kind,
        vas=(vas[0], vas[1]),
        label=certainty_label(vas, bounds),
        patient_id=patient_id,
        slice_index=slice_index,
        slice_location=float(slice_index * 10.0),
        extra={"noise_sd": sigma, "myocardium": myo_level, "signal_scale": a.signal_scale},
    )


def lge_patient(
    generator: np.random.Generator,
    patient_id: str,
    n_slices: int = 8,
    mix: dict[str, float] | None = None,
    bounds: VasBounds = VasBounds(),
) -> list[LgeSlice]:
    """A short-axis stack of one patient (base to apex); each slice's kind drawn from `mix`."""
    weights = mix or DEFAULT_MIX
    kinds = list(weights)
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    anatomy = random_anatomy(generator)
    out = []
    for i in range(n_slices):
        kind = str(generator.choice(kinds, p=p / p.sum()))
        apex = i / max(1, n_slices - 1) * 0.8
        out.append(lge_slice(generator, kind, anatomy, patient_id=patient_id, slice_index=i,
                             apex_fraction=apex, bounds=bounds))
    return out


def lge_cohort(
    n_patients: int, seed: int, n_slices: int = 8, mix: dict[str, float] | None = None,
    bounds: VasBounds = VasBounds(),
) -> list[LgeSlice]:
    """`n_patients` stacks, reproducible from `seed`; patient ids "LGE-<seed>-<n>"."""
    generator = np.random.default_rng(seed)
    out: list[LgeSlice] = []
    for p in range(n_patients):
        out.extend(lge_patient(generator, f"LGE-{seed}-{p:04d}", n_slices, mix, bounds))
    return out


# --- DICOM ------------------------------------------------------------------------------------


def phantom_uid(*parts: object) -> str:
    """A deterministic UID under 2.25 from `parts`."""
    digest = hashlib.sha256("|".join(str(p) for p in ("lge-phantom", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


def _stored(values: np.ndarray, vendor: str, slope: float = 1.0) -> tuple[np.ndarray, int, float]:
    """(stored pixels, PixelRepresentation, RescaleIntercept) in the vendor's habit; stored values
    are `values` / `slope` (Philips real images often carry a non-unit RescaleSlope)."""
    if vendor == "siemens":  # unsigned with a -4096 intercept
        return np.clip(np.rint(values + 4096), 0, 8191).astype(np.uint16), 0, -4096.0
    return np.clip(np.rint(values / slope), -32768, 32767).astype(np.int16), 1, 0.0


def _philips_slope(item: LgeSlice) -> float:
    """A per-patient Philips rescale slope (deterministic from the patient id)."""
    return (1.0, 0.5, 1.2216, 2.4432)[hashlib.sha256(item.patient_id.encode()).digest()[0] % 4]


def _window(values: np.ndarray, vendor: str) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) as a vendor's console would set it for a PSIR/magnitude image:
    Siemens and GE about the 0.5-99.5 % range, Philips a symmetric window about zero."""
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if vendor == "philips":
        return 0.0, max(2.0, 2.0 * max(abs(lo), abs(hi)))
    return (lo + hi) / 2.0, max(2.0, hi - lo)


def _common(ds: Dataset, *, study_uid: str, series_uid: str, series_number: int, vendor: str,
            description: str, patient_id: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Phantom^LGE"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Cardiac MR phantom"
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.BodyPartExamined = "HEART"
    ds.Manufacturer = {"siemens": "SIEMENS", "philips": "Philips Medical Systems", "ge": "GE MEDICAL SYSTEMS"}[vendor]
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = phantom_uid("for", study_uid)
    ds.PositionReferenceIndicator = ""
    ds.MagneticFieldStrength = "1.5"
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"


def psir_dataset(
    item: LgeSlice,
    *,
    vendor: str = "siemens",
    image: str = "psir",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 10,
    description: str | None = None,
) -> Dataset:
    """One single-frame MR Image Storage instance of `item` in a vendor's style.

    `image` "psir" writes the signed real image, "mag" the magnitude companion; the series
    description and ImageType follow the vendor (Siemens *_PSIR/*_MAG, Philips R_IR/M_IR,
    GE "MDE PSIR" with (0043,102F) raw data type 2/0).
    """
    if vendor not in VENDORS or image not in ("psir", "mag"):
        raise ValueError(f"vendor {vendor!r} / image {image!r} not supported")
    study_uid = study_uid or phantom_uid("study", item.patient_id)
    series_uid = series_uid or phantom_uid("series", item.patient_id, vendor, image)
    sop_uid = phantom_uid("sop", series_uid, item.slice_index)
    real = image == "psir"
    if description is None:
        description = {
            ("siemens", True): "LGE_SAX_PSIR", ("siemens", False): "LGE_SAX_MAG",
            ("philips", True): "LGE PSIR SA", ("philips", False): "LGE PSIR SA",
            ("ge", True): "MDE PSIR SAX", ("ge", False): "MDE SAX",
        }[(vendor, real)]
    ds = Dataset()
    ds.file_meta = file_meta(MRImageStorage, sop_uid)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    _common(ds, study_uid=study_uid, series_uid=series_uid, series_number=series_number,
            vendor=vendor, description=description, patient_id=item.patient_id)
    if vendor == "siemens":
        ds.ImageType = ["DERIVED", "PRIMARY", "R" if real else "M", "PSIR" if real else "NORM"]
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceName = "*tfl2d1r" if real else "*tfl2d1"
        ds.ScanOptions = "IR"
    elif vendor == "philips":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "R_IR" if real else "M_IR", "R" if real else "M", "IR"]
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceName = ""
        ds.ScanOptions = ""
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = ["GR"]
        ds.SequenceName = "fgre"
        ds.ScanOptions = ["FAST_GEMS", "IR_GEMS"]
        ds.add_new(0x00430010, "LO", "GEMS_PARM_01")
        ds.add_new(0x0043102F, "SS", 2 if real else 0)
    ds.SequenceVariant = ["SK", "SP"]
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "700"
    ds.EchoTime = "3.2"
    ds.EchoTrainLength = "1"
    ds.InversionTime = f"{item.inversion_time_ms:g}"
    ds.SliceThickness = "8"
    ds.SpacingBetweenSlices = "10"
    ds.InstanceNumber = item.slice_index + 1
    ds.SliceLocation = f"{item.slice_location:g}"
    ds.ImagePositionPatient = ["-150", "-150", f"{item.slice_location:g}"]
    ds.ImageOrientationPatient = ["0.7", "0.6", "-0.38", "-0.45", "0.77", "0.45"]
    ds.PixelSpacing = [f"{item.pixel_spacing:.4f}", f"{item.pixel_spacing:.4f}"]
    ds.AcquisitionNumber = 1
    values = item.psir if real else item.magnitude
    slope = _philips_slope(item) if vendor == "philips" else 1.0
    stored, representation, intercept = _stored(values, vendor, slope)
    centre, width = _window(values, vendor)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = representation
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{centre:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.PixelData = stored.tobytes()
    return ds


def ti_scout_dataset(item: LgeSlice, ti_ms: float, index: int, *, vendor: str = "siemens") -> Dataset:
    """One image of a TI scout (Look-Locker) series: same slice, the TI varies per image."""
    description = {"siemens": "TI_Scout", "philips": "Look-Locker SA", "ge": "Cine IR TI scout"}[vendor]
    series_uid = phantom_uid("ti-scout", item.patient_id, vendor)
    scout = LgeSlice(item.magnitude, item.magnitude, item.pixel_spacing, item.kind, item.vas,
                     item.label, item.patient_id, index, item.slice_location, ti_ms)
    ds = psir_dataset(scout, vendor=vendor, image="mag", series_uid=series_uid, series_number=5,
                      description=description)
    ds.ImageComments = f"TI {ti_ms:g}"
    return ds


def enhanced_psir_dataset(items: Sequence[LgeSlice], *, study_uid: str | None = None) -> Dataset:
    """An Enhanced MR Image (multi-frame) holding `items` as frames of one PSIR stack.

    Pixel Measures, Pixel Value Transformation, MR Modifier (InversionRecovery YES, InversionTimes)
    and MR Image Frame Type (ComplexImageComponent REAL) are shared functional groups; plane
    positions are per frame (PS3.3 C.8.13). All frames share one matrix and spacing.
    """
    if not items:
        raise ValueError("no slices")
    first = items[0]
    study_uid = study_uid or phantom_uid("study", first.patient_id)
    series_uid = phantom_uid("series", first.patient_id, "enhanced")
    sop_uid = phantom_uid("sop", series_uid, 1)
    ds = Dataset()
    ds.file_meta = file_meta(EnhancedMRImageStorage, sop_uid)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = sop_uid
    _common(ds, study_uid=study_uid, series_uid=series_uid, series_number=20, vendor="siemens",
            description="LGE_SAX_PSIR", patient_id=first.patient_id)
    ds.ImageType = ["DERIVED", "PRIMARY", "PSIR", "NONE"]
    ds.ComplexImageComponent = "REAL"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.AcquisitionContrast = "T1"
    ds.InstanceNumber = 1
    ds.ContentQualification = "RESEARCH"
    ds.NumberOfFrames = len(items)
    stack = np.stack([_stored(it.psir, "philips")[0] for it in items])

    measures = Dataset()
    measures.PixelSpacing = [f"{first.pixel_spacing:.4f}", f"{first.pixel_spacing:.4f}"]
    measures.SliceThickness = "8"
    transform = Dataset()
    transform.RescaleIntercept = "0"
    transform.RescaleSlope = "1"
    transform.RescaleType = "US"
    modifier = Dataset()
    modifier.InversionRecovery = "YES"
    modifier.InversionTimes = [first.inversion_time_ms]
    frame_type = Dataset()
    frame_type.FrameType = ["DERIVED", "PRIMARY", "PSIR", "NONE"]
    frame_type.ComplexImageComponent = "REAL"
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    shared.MRModifierSequence = DicomSequence([modifier])
    shared.MRImageFrameTypeSequence = DicomSequence([frame_type])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for i, it in enumerate(items):
        position = Dataset()
        position.ImagePositionPatient = ["-150", "-150", f"{it.slice_location:g}"]
        content = Dataset()
        content.InStackPositionNumber = i + 1
        content.StackID = "1"
        group = Dataset()
        group.PlanePositionSequence = DicomSequence([position])
        group.FrameContentSequence = DicomSequence([content])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stack.shape[1:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = stack.tobytes()
    return ds


def write_series(folder: Path, datasets: Sequence[Dataset]) -> list[Path]:
    """Write each dataset as <folder>/<SeriesNumber>_<InstanceNumber>.dcm; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{int(ds.SeriesNumber):03d}_{int(ds.InstanceNumber):03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_vendor_examples(folder: Path, seed: int = 0, n_slices: int = 6) -> dict[str, list[Path]]:
    """A patient's stack written the ways the router must tell apart.

    Keys: siemens_psir, siemens_mag, philips_r_ir, philips_m_ir, ge_psir, ge_mag, ti_scout,
    enhanced_psir.
    """
    generator = np.random.default_rng(seed)
    stack = lge_patient(generator, f"LGE-EX-{seed}", n_slices)
    out: dict[str, list[Path]] = {}
    for vendor, (psir_key, mag_key) in {
        "siemens": ("siemens_psir", "siemens_mag"),
        "philips": ("philips_r_ir", "philips_m_ir"),
        "ge": ("ge_psir", "ge_mag"),
    }.items():
        for key, image, number in ((psir_key, "psir", 10), (mag_key, "mag", 11)):
            datasets = [psir_dataset(s, vendor=vendor, image=image, series_number=number) for s in stack]
            out[key] = write_series(folder / key, datasets)
    scout = [ti_scout_dataset(stack[0], 100 + 25 * i, i) for i in range(8)]
    out["ti_scout"] = write_series(folder / "ti_scout", scout)
    out["enhanced_psir"] = write_series(folder / "enhanced_psir", [enhanced_psir_dataset(stack)])
    return out


def demo_series(seed: int = 0, n_slices: int = 8) -> list[Dataset]:
    """One Siemens-style PSIR short-axis stack for `sidecar demo` (a mix of clear and ambiguous slices)."""
    generator = np.random.default_rng(seed)
    stack = lge_patient(generator, f"LGE-DEMO-{seed}", n_slices)
    return [psir_dataset(s, vendor="siemens", image="psir") for s in stack]
