"""DICOM objects for phantoms, with the headers real consoles write.

MR Image Storage slices in Siemens, GE or Philips style (series descriptions, ImageType cues for
magnitude and phase-sensitive inversion recovery, InversionTime, position and orientation), US
Image Storage and US Multi-frame Image Storage with US Region Calibration (PS3.3 C.8.5.5), and
CR / DX For Presentation radiographs with VOI window and laterality. Every object carries the
Type 1 and Type 2 attributes of its IOD so that `dciodvfy` reports no errors.

All patient data is fake: `Subject` insists on a "PHANTOM" name and a "PH-" id.
`write(ds, path)` writes a PS3.10 file in Explicit VR Little Endian.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

Vendor = Literal["SIEMENS", "GE", "PHILIPS"]

MANUFACTURERS: dict[str, tuple[str, str]] = {
    "SIEMENS": ("SIEMENS", "MAGNETOM Aera"),
    "GE": ("GE MEDICAL SYSTEMS", "SIGNA Artist"),
    "PHILIPS": ("Philips Medical Systems", "Ingenia"),
}

# RegionDataType (PS3.3 C.8.5.5.1.2) and the US ImageType value 4 bit it implies (C.8.5.6.1.1).
REGION_TISSUE = 1
REGION_COLOR_FLOW = 2
REGION_PW_DOPPLER = 3
REGION_CW_DOPPLER = 4
_DOPPLER_TYPES = {REGION_COLOR_FLOW, REGION_PW_DOPPLER, REGION_CW_DOPPLER}
_MODE_BITS = {REGION_TISSUE: 0x0001, REGION_CW_DOPPLER: 0x0004, REGION_PW_DOPPLER: 0x0008,
              REGION_COLOR_FLOW: 0x0010}
# PhysicalUnits X/Y Direction (C.8.5.5.1.15): 3 cm, 4 seconds, 7 cm/s.
UNITS_CM, UNITS_SECONDS, UNITS_CM_PER_S = 3, 4, 7


def phantom_uid(*parts: str) -> str:
    """A UID under 2.25 that is a pure function of `parts` (reproducible phantoms).

    A name-based UUID (RFC 9562 version 8 layout, SHA-256) written as its integer under the
    2.25 root (PS3.5 §B.2). pydicom's `generate_uid(prefix=None)` ignores its entropy sources,
    so it cannot be used for this.
    """
    digest = hashlib.sha256("\x1f".join(["sidecar-phantom-v1", *parts]).encode()).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(raw, 'big')}"


def _new_uid() -> str:
    return str(generate_uid(prefix=None))


@dataclass(frozen=True)
class Subject:
    """The fake patient and the study every object of one phantom study shares."""

    patient_id: str = "PH-0001"
    patient_name: str = "PHANTOM^TEST"
    patient_birth_date: str = "19700101"
    patient_sex: Literal["M", "F", "O"] = "O"
    study_uid: str = field(default_factory=_new_uid)
    study_date: str = "20240101"
    study_time: str = "120000"
    accession_number: str = "PHACC0001"
    study_id: str = "1"
    study_description: str = "PHANTOM"
    referring_physician_name: str = ""

    def __post_init__(self) -> None:
        if not self.patient_name.startswith("PHANTOM"):
            raise ValueError(f"phantom patient names start with PHANTOM, got {self.patient_name!r}")
        if not self.patient_id.startswith("PH-"):
            raise ValueError(f"phantom patient ids start with PH-, got {self.patient_id!r}")


def _base(sop_class: str, modality: str, *, subject: Subject, series_uid: str | None,
          series_number: int, instance_number: int, sop_instance_uid: str | None,
          manufacturer: str, model_name: str, series_description: str) -> Dataset:
    """Patient, General Study, General Series, General Equipment, General Image, SOP Common."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid or _new_uid()
    ds.InstanceCreationDate = subject.study_date
    ds.InstanceCreationTime = subject.study_time
    # Patient module (C.7.1.1)
    ds.PatientName = subject.patient_name
    ds.PatientID = subject.patient_id
    ds.PatientBirthDate = subject.patient_birth_date
    ds.PatientSex = subject.patient_sex
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = subject.study_uid
    ds.StudyDate = subject.study_date
    ds.StudyTime = subject.study_time
    ds.ReferringPhysicianName = subject.referring_physician_name
    ds.StudyID = subject.study_id
    ds.AccessionNumber = subject.accession_number
    ds.StudyDescription = subject.study_description
    # General Series (C.7.3.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or _new_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = subject.study_date
    ds.SeriesTime = subject.study_time
    # General Equipment (C.7.5.1)
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model_name
    ds.InstitutionName = "PHANTOM INSTITUTION"
    ds.SoftwareVersions = "dicom-ai-sidecar phantoms"
    # General Image (C.7.6.1)
    ds.InstanceNumber = instance_number
    ds.ContentDate = subject.study_date
    ds.ContentTime = subject.study_time
    ds.AcquisitionDate = subject.study_date
    ds.AcquisitionTime = subject.study_time
    return ds


def _set_pixels(ds: Dataset, pixels: npt.ArrayLike, *, photometric: str, frames: bool,
                bits_stored: int | None = None) -> None:
    """Image Pixel module (C.7.6.3) from an integer array (frames first when `frames`)."""
    arr = np.asarray(pixels)
    if arr.dtype.kind not in "ui" or arr.dtype.itemsize > 2:
        raise ValueError(f"pixels must be 8- or 16-bit integers, got {arr.dtype}")
    samples = 3 if photometric == "RGB" else 1
    frame_shape = arr.shape[1:] if frames else arr.shape
    expected = 3 if samples == 3 else 2
    if len(frame_shape) != expected or (samples == 3 and frame_shape[-1] != 3):
        want = "(rows, cols, 3)" if samples == 3 else "(rows, cols)"
        per = " per frame" if frames else ""
        raise ValueError(f"{photometric} pixels need shape {want}{per}, got {arr.shape}")
    bits_allocated = arr.dtype.itemsize * 8
    stored = bits_stored or bits_allocated
    if arr.size and int(arr.max()) >= 2 ** (stored - (arr.dtype.kind == "i")):
        raise ValueError(f"pixel values exceed BitsStored {stored}")
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = int(frame_shape[0]), int(frame_shape[1])
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"


# --- MR ----------------------------------------------------------------------------------------


def _mr_cues(vendor: str, psir: bool) -> tuple[str, list[str], str]:
    """Default SeriesDescription, ImageType and SequenceName as each vendor writes them."""
    if vendor == "SIEMENS":
        if psir:
            return "LGE_PSIR", ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D", "PSIR"], "*tfl2d1_16"
        return "LGE_MAG", ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D", "MAG"], "*tfl2d1_16"
    if vendor == "GE":
        return ("MDE PSIR" if psir else "MDE", ["ORIGINAL", "PRIMARY", "OTHER"], "fgre")
    if vendor == "PHILIPS":
        if psir:
            return "LGE PSIR", ["ORIGINAL", "PRIMARY", "R_IR", "R", "IR"], "TFE"
        return "LGE", ["ORIGINAL", "PRIMARY", "M_IR", "M", "IR"], "TFE"
    raise ValueError(f"vendor must be SIEMENS, GE or PHILIPS, got {vendor!r}")


def mr_slice(
    pixels: npt.ArrayLike,
    *,
    subject: Subject | None = None,
    vendor: Vendor = "SIEMENS",
    series_description: str | None = None,
    image_type: Sequence[str] | None = None,
    inversion_time_ms: float | None = 300.0,
    psir: bool = False,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    pixel_spacing: Sequence[float] = (1.4, 1.4),
    slice_thickness_mm: float = 8.0,
    repetition_time_ms: float = 700.0,
    echo_time_ms: float = 3.2,
    field_strength_t: float = 1.5,
    series_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> Dataset:
    """An MR Image Storage slice (PS3.3 A.4). `pixels` (rows, cols): uint16 for magnitude,
    int16 allowed for phase-sensitive (PSIR) images. With `inversion_time_ms` the sequence is
    inversion recovery (ScanningSequence GR\\IR) and InversionTime is written; None writes GR.
    SeriesDescription, ImageType and SequenceName default to the vendor's own cues."""
    subject = subject or Subject()
    desc, default_type, sequence_name = _mr_cues(vendor, psir)
    manufacturer, model = MANUFACTURERS[vendor]
    ds = _base(MRImageStorage, "MR", subject=subject, series_uid=series_uid,
               series_number=series_number, instance_number=instance_number,
               sop_instance_uid=sop_instance_uid, manufacturer=manufacturer, model_name=model,
               series_description=series_description or desc)
    if len(orientation) != 6 or len(position) != 3 or len(pixel_spacing) != 2:
        raise ValueError("orientation needs 6 values, position 3, pixel_spacing 2")
    ds.BodyPartExamined = "HEART"
    ds.PatientPosition = "HFS"
    # Frame of Reference (C.7.4.1)
    # One frame of reference per study unless told otherwise: slices of a stack line up.
    ds.FrameOfReferenceUID = frame_of_reference_uid or phantom_uid(subject.study_uid, "frame")
    ds.PositionReferenceIndicator = ""
    # Image Plane (C.7.6.2)
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.SliceThickness = slice_thickness_mm
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    ds.SliceLocation = float(np.dot(normal, np.asarray(position, float)))
    # MR Image (C.8.3.1)
    ds.ImageType = list(image_type or default_type)
    ds.ScanningSequence = ["GR", "IR"] if inversion_time_ms is not None else "GR"
    ds.SequenceVariant = ["SK", "SP", "MP"] if inversion_time_ms is not None else ["SK", "SP"]
    ds.ScanOptions = ["IR"] if inversion_time_ms is not None else ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = sequence_name
    ds.RepetitionTime = repetition_time_ms
    ds.EchoTime = echo_time_ms
    ds.EchoTrainLength = 1
    if inversion_time_ms is not None:
        ds.InversionTime = inversion_time_ms
    ds.NumberOfAverages = 1
    ds.ImagingFrequency = 42.577 * field_strength_t
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = field_strength_t
    ds.FlipAngle = 20
    ds.AcquisitionNumber = 1
    arr = np.asarray(pixels)
    if arr.dtype.kind == "i" and not psir:
        raise ValueError("signed pixels are for phase-sensitive (psir=True) images")
    _set_pixels(ds, arr, photometric="MONOCHROME2", frames=False, bits_stored=arr.dtype.itemsize * 8)
    if arr.dtype.itemsize != 2:
        raise ValueError("MR pixels must be 16-bit (BitsAllocated 16, PS3.3 C.8.3.1.1)")
    return ds


# --- ultrasound --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsRegion:
    """One item of the Sequence of Ultrasound Regions (PS3.3 C.8.5.5).

    Bounds are inclusive pixel coordinates. Deltas are physical units per pixel: cm for
    tissue and colour flow; seconds (x) and cm/s (y) for spectral Doppler.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    physical_delta_x: float
    physical_delta_y: float
    data_type: int = REGION_TISSUE
    spatial_format: int = 1  # 1: 2D, 2: M-mode, 3: spectral
    units_x: int = UNITS_CM
    units_y: int = UNITS_CM
    flags: int = 0
    reference_pixel: tuple[int, int] | None = None  # (x0, y0) of the physical origin

    def __post_init__(self) -> None:
        if not (0 <= self.x0 <= self.x1 and 0 <= self.y0 <= self.y1):
            raise ValueError(f"region bounds ({self.x0},{self.y0})-({self.x1},{self.y1}) invalid")
        if self.physical_delta_x <= 0 or self.physical_delta_y <= 0:
            raise ValueError("physical deltas must be > 0")

    @classmethod
    def spectral(cls, x0: int, y0: int, x1: int, y1: int, *, seconds_per_px: float,
                 cm_per_s_per_px: float, baseline_row: int, pulsed: bool = True) -> UsRegion:
        """A PW (or CW) spectral Doppler strip with its velocity baseline at `baseline_row`."""
        return cls(x0, y0, x1, y1, seconds_per_px, cm_per_s_per_px,
                   data_type=REGION_PW_DOPPLER if pulsed else REGION_CW_DOPPLER,
                   spatial_format=3, units_x=UNITS_SECONDS, units_y=UNITS_CM_PER_S,
                   reference_pixel=(0, baseline_row - y0))

    @property
    def is_doppler(self) -> bool:
        return self.data_type in _DOPPLER_TYPES

    def to_item(self) -> Dataset:
        item = Dataset()
        item.RegionSpatialFormat = self.spatial_format
        item.RegionDataType = self.data_type
        item.RegionFlags = self.flags
        item.RegionLocationMinX0 = self.x0
        item.RegionLocationMinY0 = self.y0
        item.RegionLocationMaxX1 = self.x1
        item.RegionLocationMaxY1 = self.y1
        item.PhysicalUnitsXDirection = self.units_x
        item.PhysicalUnitsYDirection = self.units_y
        item.PhysicalDeltaX = float(self.physical_delta_x)
        item.PhysicalDeltaY = float(self.physical_delta_y)
        if self.reference_pixel is not None:
            item.ReferencePixelX0, item.ReferencePixelY0 = self.reference_pixel
        return item


def _us_common(ds: Dataset, pixels: npt.ArrayLike, regions: Sequence[UsRegion],
               doppler: bool | None, anatomy: str, laterality: str, frames: bool) -> None:
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"US pixels must be uint8, got {arr.dtype}")
    rgb = arr.ndim == (4 if frames else 3)
    has_doppler = any(r.is_doppler for r in regions)
    if doppler is not None and doppler != has_doppler:
        raise ValueError(f"doppler={doppler} but the regions {'do' if has_doppler else 'do not'} "
                         "include a Doppler region")
    rows, cols = arr.shape[1:3] if frames else arr.shape[:2]
    for r in regions:
        if r.x1 >= cols or r.y1 >= rows:
            raise ValueError(f"region ({r.x0},{r.y0})-({r.x1},{r.y1}) outside a {cols}x{rows} image")
    modes = 0
    for r in regions:
        modes |= _MODE_BITS.get(r.data_type, 0)
    # US Image module (C.8.5.6): value 3 anatomy, value 4 the modes present, as 4 hex digits.
    ds.ImageType = ["ORIGINAL", "PRIMARY", anatomy, f"{modes or 1:04X}"]
    if laterality not in ("", "L", "R"):
        raise ValueError(f"laterality must be L, R or empty, got {laterality!r}")
    ds.Laterality = laterality  # General Series Type 2C: empty means unknown
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence([r.to_item() for r in regions])
    _set_pixels(ds, arr, photometric="RGB" if rgb else "MONOCHROME2", frames=frames)


def _us_dataset(sop_class: str, pixels: npt.ArrayLike, frames: bool, *, regions: Sequence[UsRegion],
                doppler: bool | None, subject: Subject | None, anatomy: str, body_part: str, laterality: str,
                series_description: str, manufacturer: str, model_name: str, transducer: str,
                series_uid: str | None, series_number: int, instance_number: int,
                sop_instance_uid: str | None) -> Dataset:
    """What `us_image` and `us_cine` share: the common modules, US equipment and the US Image module."""
    ds = _base(sop_class, "US", subject=subject or Subject(), series_uid=series_uid,
               series_number=series_number, instance_number=instance_number,
               sop_instance_uid=sop_instance_uid, manufacturer=manufacturer,
               model_name=model_name, series_description=series_description)
    if body_part:
        ds.BodyPartExamined = body_part
    ds.TransducerData = [transducer]
    _us_common(ds, pixels, regions, doppler, anatomy, laterality, frames=frames)
    return ds


def us_image(
    pixels: npt.ArrayLike,
    *,
    regions: Sequence[UsRegion],
    doppler: bool | None = None,
    subject: Subject | None = None,
    anatomy: str = "ABDOMINAL",
    body_part: str = "",
    laterality: str = "",  # L, R or empty: checked in _us_common
    series_description: str = "US PHANTOM",
    manufacturer: str = "GE Healthcare",
    model_name: str = "LOGIQ E10",
    transducer: str = "L3-12-D",
    series_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A single-frame US Image Storage object (PS3.3 A.6): uint8 (rows, cols) MONOCHROME2 or
    (rows, cols, 3) RGB, with one calibration item per region. `doppler`, when given, must agree
    with the regions (colour flow or spectral Doppler present)."""
    return _us_dataset(UltrasoundImageStorage, pixels, False, regions=regions, doppler=doppler, subject=subject,
                       anatomy=anatomy, body_part=body_part, laterality=laterality,
                       series_description=series_description, manufacturer=manufacturer,
                       model_name=model_name, transducer=transducer, series_uid=series_uid,
                       series_number=series_number, instance_number=instance_number,
                       sop_instance_uid=sop_instance_uid)


def us_cine(
    frames: npt.ArrayLike,
    frame_time_ms: float,
    *,
    regions: Sequence[UsRegion],
    doppler: bool | None = None,
    subject: Subject | None = None,
    anatomy: str = "TRANSTHORACIC",
    body_part: str = "",
    laterality: str = "",  # L, R or empty: checked in _us_common
    series_description: str = "US CINE PHANTOM",
    manufacturer: str = "GE Healthcare",
    model_name: str = "Vivid E95",
    transducer: str = "M5Sc-D",
    series_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A US Multi-frame Image Storage cine (PS3.3 A.7): uint8 (frames, rows, cols[, 3]) with
    FrameTime in ms; the Frame Increment Pointer points at FrameTime (C.7.6.6, C.7.6.5)."""
    if frame_time_ms <= 0:
        raise ValueError(f"frame_time_ms must be > 0, got {frame_time_ms}")
    ds = _us_dataset(UltrasoundMultiFrameImageStorage, frames, True, regions=regions, doppler=doppler,
                     subject=subject, anatomy=anatomy, body_part=body_part, laterality=laterality,
                     series_description=series_description, manufacturer=manufacturer,
                     model_name=model_name, transducer=transducer, series_uid=series_uid,
                     series_number=series_number, instance_number=instance_number,
                     sop_instance_uid=sop_instance_uid)
    ds.FrameTime = float(frame_time_ms)
    ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    ds.CineRate = max(1, round(1000.0 / frame_time_ms))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    return ds


# --- X-ray -------------------------------------------------------------------------------------

# SNOMED CT codes for the Anatomic Region Sequence (PS3.16 CID 4009 / CID 4031).
_ANATOMY_CODES = {"HAND": ("85562004", "Hand"), "FOOT": ("56459004", "Foot"),
                  "CHEST": ("51185008", "Chest"), "KNEE": ("72696002", "Knee")}
# SNOMED CT view codes (PS3.16 CID 4010).
_VIEW_CODES = {"PA": ("399348003", "postero-anterior"), "AP": ("399246000", "antero-posterior")}


def xray(
    pixels: npt.ArrayLike,
    *,
    modality: Literal["CR", "DX"] = "DX",
    monochrome1: bool = False,
    window_center: float | None = None,
    window_width: float | None = None,
    laterality: Literal["L", "R"] = "R",
    imager_pixel_spacing: Sequence[float] = (0.1, 0.1),
    body_part: str = "HAND",
    view_position: str = "PA",
    bits_stored: int = 12,
    subject: Subject | None = None,
    series_description: str | None = None,
    manufacturer: str = "PHILIPS",
    model_name: str = "DigitalDiagnost",
    series_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A CR Image Storage (PS3.3 A.2) or DX Image Storage - For Presentation (A.26) radiograph.

    `pixels` uint16 (rows, cols) within `bits_stored`. MONOCHROME1 gets the INVERSE
    presentation LUT shape, MONOCHROME2 IDENTITY (DX, C.8.11.3.1.3). The window defaults to the
    full stored range.
    """
    subject = subject or Subject()
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be CR or DX, got {modality!r}")
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be L or R, got {laterality!r}")
    sop_class = ComputedRadiographyImageStorage if modality == "CR" else \
        DigitalXRayImageStorageForPresentation
    ds = _base(sop_class, modality, subject=subject, series_uid=series_uid,
               series_number=series_number, instance_number=instance_number,
               sop_instance_uid=sop_instance_uid, manufacturer=manufacturer,
               model_name=model_name,
               series_description=series_description or f"{body_part} {view_position}")
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.ImageLaterality = laterality  # so General Series Laterality must be absent (C.7.3.1)
    ds.PatientOrientation = ["A", "F"] if view_position == "PA" else ["P", "F"]
    ds.ImagerPixelSpacing = [float(v) for v in imager_pixel_spacing]
    ds.KVP = 55.0
    arr = np.asarray(pixels)
    if arr.dtype != np.uint16:
        raise ValueError(f"X-ray pixels must be uint16, got {arr.dtype}")
    photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    _set_pixels(ds, arr, photometric=photometric, frames=False, bits_stored=bits_stored)
    top = 2**bits_stored - 1
    ds.WindowCenter = float(window_center if window_center is not None else (top + 1) / 2)
    ds.WindowWidth = float(window_width if window_width is not None else top + 1)
    if modality == "DX":
        # LINEAR is the default; CR leaves VOI LUT Function (0028,1056, Type 3) out: OHIF's image
        # library mis-renders a CR that carries it (cornerstone3D #2844).
        ds.VOILUTFunction = "LINEAR"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
        ds.LossyImageCompression = "00"
        ds.BurnedInAnnotation = "NO"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = "NONE"
        ds.AcquisitionContextSequence = DicomSequence([])
        if view_position in _VIEW_CODES:
            view = Dataset()
            view.CodeValue, view.CodeMeaning = _VIEW_CODES[view_position]
            view.CodingSchemeDesignator = "SCT"
            ds.ViewCodeSequence = DicomSequence([view])
            ds.ViewCodeSequence[0].ViewModifierCodeSequence = DicomSequence([])
        code, meaning = _ANATOMY_CODES.get(body_part, ("85562004", "Hand"))
        region = Dataset()
        region.CodeValue = code
        region.CodingSchemeDesignator = "SCT"
        region.CodeMeaning = meaning
        ds.AnatomicRegionSequence = DicomSequence([region])
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    return ds


# --- files -------------------------------------------------------------------------------------


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """PS3.10 file meta for one object in Explicit VR Little Endian (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def with_file_meta(ds: Dataset) -> Dataset:
    """Give an in-memory dataset its file meta (Explicit VR LE), so it can be written or sent
    (C-STORE needs the transfer syntax) as it is; returns `ds`."""
    ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    return ds


def write(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write `ds` as a PS3.10 file (preamble, file meta, Explicit VR Little Endian)."""
    meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    meta.ImplementationVersionName = "SIDECAR_PHANTOM"
    ds.file_meta = meta
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out
