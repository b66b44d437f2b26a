"""Small, valid source datasets for tests: MR, US (RGB), US cine (multi-frame) and DX.

Every function is deterministic: pixel data comes from a seeded generator and UIDs are
derived from the seed unless given. Patient attributes are fake. Each dataset carries file
meta (Explicit VR Little Endian), so it can be written with `ds.save_as(path)` and checked
with dciodvfy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)
from pynetdicom.dsutils import encode

FAKE_PATIENT_NAME = "Phantom^Test"
FAKE_PATIENT_ID = "FAKE-0001"
FAKE_BIRTH_DATE = "19700101"


def fake_uid(*parts: object) -> str:
    """A deterministic test UID under 2.25 from `parts`."""
    digest = hashlib.sha256("|".join(str(p) for p in ("test-factory", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


def _base(
    sop_class_uid: str,
    modality: str,
    *,
    seed: int,
    study_uid: str | None,
    series_uid: str | None,
    sop_uid: str | None,
    instance_number: int,
) -> Dataset:
    """Patient, study, series, equipment and SOP common modules, with file meta."""
    study_uid = study_uid or fake_uid("study", seed)
    series_uid = series_uid or fake_uid("series", modality, seed)
    sop_uid = sop_uid or fake_uid("sop", series_uid, instance_number)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = FAKE_BIRTH_DATE
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = f"ACC{seed:05d}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic phantom study"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"Synthetic {modality}"
    ds.Manufacturer = "Sidecar Test Factory"
    ds.InstanceNumber = instance_number
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    return ds


def _grey_pixels(ds: Dataset, pixels: np.ndarray, bits: int, bits_stored: int | None = None) -> None:
    """Image Pixel module for MONOCHROME2 unsigned data (`bits_stored` of `bits` allocated)."""
    stored = bits if bits_stored is None else bits_stored
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = bits
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def _rgb_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Image Pixel module for interleaved 8-bit RGB data."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[-3:-1]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def make_mr(
    *,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
    size: int = 64,
    images_in_acquisition: int | None = None,
) -> Dataset:
    """An MR Image (uint16, `size` x `size`): slice `instance_number` of an axial stack.

    ImagesInAcquisition (an expected count the assembler uses) is set only when given.
    """
    rng = np.random.default_rng([seed, instance_number])
    ds = _base(
        MRImageStorage,
        "MR",
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        instance_number=instance_number,
    )
    ds.SeriesDescription = "LGE PSIR SAX"
    ds.BodyPartExamined = "HEART"
    ds.FrameOfReferenceUID = fake_uid("for", ds.SeriesInstanceUID)
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = ["GR", "IR"]
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "700"
    ds.EchoTime = "3.2"
    ds.EchoTrainLength = "1"
    ds.InversionTime = "300"
    ds.MagneticFieldStrength = "1.5"
    ds.SliceThickness = "8"
    ds.SpacingBetweenSlices = "10"
    ds.PixelSpacing = ["1.5", "1.5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["-48", "-48", str(10 * (instance_number - 1))]
    ds.SliceLocation = str(10 * (instance_number - 1))
    ds.AcquisitionNumber = 1
    if images_in_acquisition is not None:
        ds.ImagesInAcquisition = images_in_acquisition
    pixels = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    _grey_pixels(ds, pixels, 16, bits_stored=12)
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    return ds


def make_mr_series(
    n: int,
    *,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    images_in_acquisition: int | None = None,
) -> list[Dataset]:
    """`n` MR slices of one series (instance numbers 1..n)."""
    first = make_mr(
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        images_in_acquisition=images_in_acquisition,
    )
    return [first] + [
        make_mr(
            seed=seed,
            study_uid=first.StudyInstanceUID,
            series_uid=first.SeriesInstanceUID,
            instance_number=i,
            images_in_acquisition=images_in_acquisition,
        )
        for i in range(2, n + 1)
    ]


def by_instance_number(ds: Dataset) -> str:
    """File name of a slice in its series folder: the instance number, three digits."""
    return f"{int(ds.InstanceNumber):03d}.dcm"


def write_series(
    folder: Path, datasets: Iterable[Dataset], name: Callable[[Dataset], str] = by_instance_number,
) -> list[Path]:
    """Write each dataset as a Part 10 file `folder / name(ds)` (folder made as needed); the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / name(ds)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _us_common(ds: Dataset) -> None:
    """US Image module attributes shared by single- and multi-frame US."""
    ds.BodyPartExamined = "FOOT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.Laterality = "L"
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "00"


def make_us(
    *,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 96,
    columns: int = 128,
) -> Dataset:
    """A single-frame RGB Ultrasound Image (uint8, `rows` x `columns` x 3)."""
    rng = np.random.default_rng([seed, instance_number, 2])
    ds = _base(
        UltrasoundImageStorage,
        "US",
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        instance_number=instance_number,
    )
    ds.SeriesDescription = "MTP1 longitudinal"
    _us_common(ds)
    pixels = rng.integers(0, 256, size=(rows, columns, 3), dtype=np.uint8)
    _rgb_pixels(ds, pixels)
    return ds


def make_us_cine(
    *,
    seed: int = 0,
    frames: int = 4,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 64,
    columns: int = 80,
) -> Dataset:
    """A multi-frame greyscale Ultrasound cine loop (uint8, `frames` frames)."""
    rng = np.random.default_rng([seed, instance_number, 3])
    ds = _base(
        UltrasoundMultiFrameImageStorage,
        "US",
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        instance_number=instance_number,
    )
    ds.SeriesDescription = "Synovium cine"
    _us_common(ds)
    ds.NumberOfFrames = frames
    ds.FrameTime = "33.3"
    ds.FrameIncrementPointer = 0x00181063  # Frame Time (PS3.3 C.7.6.6 Multi-frame)
    pixels = rng.integers(0, 256, size=(frames, rows, columns), dtype=np.uint8)
    _grey_pixels(ds, pixels, 8)
    return ds


def make_dx(
    *,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 128,
    columns: int = 96,
) -> Dataset:
    """A DX For Presentation image of a hand (uint16, 12 bits stored)."""
    rng = np.random.default_rng([seed, instance_number, 4])
    ds = _base(
        DigitalXRayImageStorageForPresentation,
        "DX",
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        instance_number=instance_number,
    )
    ds.SeriesDescription = "Hands PA"
    ds.BodyPartExamined = "HAND"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientOrientation = ["R", "F"]
    ds.ImageLaterality = "L"
    ds.ViewPosition = "PA"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = ["0.15", "0.15"]
    ds.PixelSpacing = ["0.15", "0.15"]
    ds.KVP = "55"
    ds.ExposureTime = "10"
    ds.XRayTubeCurrent = "200"
    ds.AcquisitionDeviceProcessingDescription = ""
    ds.PresentationLUTShape = "IDENTITY"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = []
    ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
    ds.AnatomicRegionSequence = [_code("85562004", "SCT", "Hand")]
    pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    _grey_pixels(ds, pixels, 16, bits_stored=12)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def encoded(ds: Dataset, implicit_vr: bool, little_endian: bool) -> bytes:
    """`ds` as a dataset byte stream (pynetdicom's encode, which returns None on failure: raised here)."""
    data = encode(ds, implicit_vr, little_endian)
    if data is None:
        raise ValueError("pynetdicom could not encode the dataset")
    return bytes(data)
