"""Secondary Capture images (PS3.3 A.8.1) of model-generated pictures, in the source study.

highdicom's SCImage copies patient and study from the source. When the result is not for
clinical use, "NOT FOR CLINICAL USE" is in the SeriesDescription and ImageComments and burned
into the pixels (BurnedInAnnotation YES), so every viewer shows it.
"""

from __future__ import annotations

import copy
import re

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from models.base import ModelCard
from models.findings import GeneratedImage
from sidecar.dicom import codes
from sidecar.dicom.uids import result_uid, short_uid
from sidecar.errors import ResultError
from sidecar.results.patient import repaired_source
from sidecar.results.sr import series_description

SC_SERIES_NUMBER = 9902
_BIPED = {"A", "P", "R", "L", "H", "F"}
# Direction cosine axis -> letter of the direction it points to (PS3.3 C.7.6.1.1.1).
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def load_font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled default font at `size_px` (no font files needed on the host)."""
    return ImageFont.load_default(size=size_px)


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """Row/column directions of `source` as single biped letters, or None when unknown.

    Taken from PatientOrientation, else from the dominant axis of ImageOrientationPatient.
    """
    value = source.get("PatientOrientation")
    if value and len(value) == 2 and all(v and v[0] in _BIPED for v in value):
        return (value[0][0], value[1][0])
    iop = source.get("ImageOrientationPatient")
    if iop and len(iop) == 6:
        letters = []
        for cosines in (iop[:3], iop[3:]):
            axis = int(np.argmax(np.abs(np.asarray(cosines, dtype=float))))
            positive, negative = _AXIS_LETTERS[axis]
            letters.append(positive if float(cosines[axis]) > 0 else negative)
        return (letters[0], letters[1])
    return None


def source_reference(source: Dataset) -> Dataset:
    """A Source Image Sequence item pointing at `source` (General Image module)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def burn_in_notice(pixels: np.ndarray, text: str) -> np.ndarray:
    """A copy of `pixels` with `text` in white on a black band across the top."""
    mode = "RGB" if pixels.ndim == 3 else "L"
    image = Image.fromarray(pixels, mode=mode)
    height = max(8, min(image.height // 8, 24))
    font = load_font(max(6, height - 4))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width - 1, height), fill=(0, 0, 0) if mode == "RGB" else 0)
    draw.text((2, 1), text, fill=(255, 255, 255) if mode == "RGB" else 255, font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def secondary_capture(
    pixels: np.ndarray,
    photometric: str,
    source: Dataset,
    *,
    series_uid: str,
    series_number: int,
    sop_uid: str,
    instance_number: int,
    manufacturer: str,
    description: str,
    comments: str,
    burned_in: bool,
    model_name: str | None = None,
    software_version: str | None = None,
) -> Dataset:
    """An 8-bit SCImage in `source`'s study that references `source` (shared by SC and alerts).

    Invalid patient/study values of the source are repaired or left empty first (and said so in
    ImageComments), so a legacy header never stops the image (sidecar.results.patient).
    """
    source, repairs = repaired_source(source)
    if repairs:
        comments = " ".join([comments, *(r.note() for r in repairs)])
    orientation = patient_orientation(source)
    laterality = source.get("ImageLaterality") or source.get("Laterality")
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation=photometric,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=instance_number,
            manufacturer=manufacturer,
            patient_orientation=orientation or ("A", "F"),
            laterality=laterality if laterality in ("L", "R") else None,
            series_description=description,
            manufacturer_model_name=model_name,
            software_versions=software_version,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        # the exception's text may quote a source value: name its kind only
        raise ResultError(f"cannot build secondary capture: {type(exc).__name__}") from exc
    if orientation is None:
        # Unknown orientation: PatientOrientation is Type 2C for SC (PS3.3 C.7.6.1), so empty.
        sc.PatientOrientation = []
    body_part = source.get("BodyPartExamined")
    if body_part:
        sc.BodyPartExamined = body_part
    elif "Laterality" not in sc:
        # Laterality is Type 2C (General Series, PS3.3 C.7.3.1) on a paired body part; with no
        # body part known, whether it applies is unknown, so it is present and empty.
        sc.Laterality = ""
    sc.ImageComments = comments[:10240]  # LT
    sc.BurnedInAnnotation = "YES" if burned_in else "NO"
    sc.SourceImageSequence = [source_reference(source)]
    keep_source_modality(sc, source)
    return sc


_MODALITY_RE = re.compile(r"^[A-Z0-9_ ]{2,16}$")


def keep_source_modality(sc: Dataset, source: Dataset) -> None:
    """The source's Modality instead of highdicom's "OT", so hanging protocols place the image
    with its study's MR or US series: the SC Equipment module's Modality (PS3.3 C.8.6.1, Type 3,
    "overrides the General Series Module") names the source equipment, which is the source's."""
    modality = str(source.get("Modality", "") or "").strip()
    if _MODALITY_RE.match(modality) and modality not in ("SR", "PR", "KO", "SEG"):
        sc.Modality = modality


def instance_number_for(source: Dataset, index: int, revision: int) -> int:
    """An AI image's InstanceNumber: its source's (so numbers increase with the source's within
    the AI series), the job's image index when the source has none; a revision adds 1000."""
    try:
        base = int(source.get("InstanceNumber"))
    except (TypeError, ValueError):
        base = index
    if not 0 < base < 1000:
        base = index
    return base + 1000 * revision


def build_sc(
    image: GeneratedImage,
    source: Dataset,
    card: ModelCard,
    *,
    input_uid: str,
    index: int,
    revision: int = 0,
    not_for_clinical_use: bool | None = None,
    instance_number: int | None = None,
) -> Dataset:
    """A Secondary Capture of one generated image; `index` (1-based) numbers it in the job.

    `instance_number` defaults to `index` (+ 1000 per revision); `build_results` passes the
    source's InstanceNumber when the source has only this generated image, so the AI series'
    numbers follow the source series'.
    `not_for_clinical_use` defaults to the card's flag; the findings' flag can be passed in.
    """
    if str(source.SOPInstanceUID) != image.source.sop_instance_uid:
        raise ResultError(
            f"generated image {index} is about {short_uid(image.source.sop_instance_uid)}, "
            f"but source {short_uid(str(source.SOPInstanceUID))} was given"
        )
    if image.photometric not in ("MONOCHROME2", "RGB"):
        raise ResultError(f"generated image {index}: unsupported photometric {image.photometric}")
    nfcu = card.not_for_clinical_use if not_for_clinical_use is None else not_for_clinical_use
    pixels = image.pixels
    comments = image.description
    if nfcu:
        pixels = burn_in_notice(pixels, codes.NOT_FOR_CLINICAL_USE_TAG.strip("[]"))
        comments = f"{codes.NOT_FOR_CLINICAL_USE}. {image.description}"
    sc = secondary_capture(
        pixels,
        image.photometric,
        source,
        series_uid=result_uid(str(source.SeriesInstanceUID), card.id, card.version, "sc-series", 0),
        series_number=SC_SERIES_NUMBER,
        sop_uid=result_uid(input_uid, card.id, card.version, f"sc:{index}", revision),
        instance_number=instance_number if instance_number is not None else index + 1000 * revision,
        manufacturer=card.manufacturer,
        description=series_description("AI", image_description(card.name, image.description), nfcu),
        comments=comments[:10240],  # LT
        burned_in=nfcu,
        model_name=card.id,
        software_version=card.version,
    )
    keep_source_geometry(sc, source)
    mark_derivation(sc, card)
    return sc


def image_description(model_name: str, description: str) -> str:
    """The model's name and the image's description; a "NOT FOR DIAGNOSIS" in the description
    leads, so shortening to LO keeps it."""
    marker = "NOT FOR DIAGNOSIS"
    if marker in description.upper():
        rest = re.sub(re.escape(marker), "", description, flags=re.IGNORECASE).strip(" -:;,")
        return f"{marker} {model_name} {rest}".strip()
    return f"{model_name} {description}"


def keep_source_geometry(sc: Dataset, source: Dataset) -> None:
    """An image drawn on the source's own pixel grid (same Rows and Columns) keeps the source's
    physical calibration, so distances measured on it mean the same: Pixel Spacing (SC Image
    module, PS3.3 C.8.6.2) and, for ultrasound, the Sequence of Ultrasound Regions (C.8.5.5:
    where the B-mode region is, its physical deltas). A resampled image keeps neither."""
    if (int(sc.Rows), int(sc.Columns)) != (int(source.Rows), int(source.Columns)):
        return
    for keyword in ("PixelSpacing", "SequenceOfUltrasoundRegions"):
        if keyword in source:
            sc[keyword] = copy.deepcopy(source[keyword])


def mark_derivation(sc: Dataset, card: ModelCard) -> None:
    """Say how the image was made (General Image module, PS3.3 C.7.6.1): a Derivation
    Description naming the model, a Derivation Code, and the source's purpose of reference."""
    sc.DerivationDescription = f"Generated by model {card.id} {card.version} ({card.name}) from the source image"[:1024]
    sc.DerivationCodeSequence = [copy.deepcopy(codes.AI_GENERATED_IMAGE)]
    for item in sc.SourceImageSequence:
        item.PurposeOfReferenceCodeSequence = [copy.deepcopy(codes.SOURCE_FOR_PROCESSING)]
    sc.CodingSchemeIdentificationSequence = list(codes.coding_scheme_identification())
