"""One result of every bundled model, shaped as its wrapper hands it over, with its real card vocabulary.

The findings follow each model's `predict` (labels, probabilities, sites, detections, generated
images, notes); the sources come from the DICOM factory. Used by the SR template and viewer-text
tests, so every model's SR is checked without running eight networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from models.base import ModelCard, ReportVocabulary
from models.elastography.concepts import VOCABULARY as ELASTO
from models.elastography.wrapper import DESCRIPTION as ELASTO_DESCRIPTION
from models.findings import Classification, Detection, DomainVerdict, Findings, GeneratedImage, ImageRef, Measurement
from models.gout_mtp1.concepts import VOCABULARY as GOUT
from models.hand_joints.concepts import VOCABULARY as HAND
from models.lge_qa.concepts import VOCABULARY as LGE
from models.synovitis.concepts import VOCABULARY as SYNOVITIS
from tests.helpers.dicom_factory import make_dx, make_mr, make_us


def ref(ds: Dataset) -> ImageRef:
    return ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID))


def card(model_id: str, name: str, labels: tuple[str, ...], vocabulary: ReportVocabulary) -> ModelCard:
    return ModelCard(id=model_id, version="0.1.0-demo", name=name, manufacturer="DICOM AI sidecar project",
                     intended_use="demo", labels=labels, vocabulary=vocabulary)


@dataclass(frozen=True)
class ModelResult:
    """What build_results gets for one job of one model."""

    card: ModelCard
    findings: Findings
    sources: list[Dataset]
    kind: str
    outputs: tuple[str, ...] = ("sr",)

    @property
    def input_uid(self) -> str:
        first = self.sources[0]
        return str(first.SOPInstanceUID if self.kind == "instance" else first.SeriesInstanceUID)


def lge_slice(*, out_of_domain: bool = False) -> ModelResult:
    mr = make_mr(seed=7, instance_number=3)
    labels = ("high_certainty", "low_certainty")
    c = Classification("low_certainty", {"high_certainty": 0.19, "low_certainty": 0.81}, source=ref(mr),
                       uncertain=True, finding_site="left ventricle")
    domain = (DomainVerdict(False, 41.2, 12.3, ref(mr), "feature distance 41.2 > 12.3"),) if out_of_domain else ()
    f = Findings("lge_qa", "0.1.0-demo", classifications=(c,), notes=("1 of 1 slices low certainty",),
                 domain=domain)
    return ModelResult(card("lge_qa", "LGE CMR slice certainty (EfficientNetV2)", labels, LGE), f, [mr], "instance")


def synovitis_series() -> ModelResult:
    images = [make_us(seed=3, instance_number=i) for i in (1, 2)]
    labels = ("grade_0", "grade_1", "grade_2", "grade_3")
    probs = [{"grade_0": 0.7, "grade_1": 0.2, "grade_2": 0.05, "grade_3": 0.05},
             {"grade_0": 0.1, "grade_1": 0.2, "grade_2": 0.6, "grade_3": 0.1}]
    items = tuple(Classification(max(p, key=p.__getitem__), p, source=ref(ds), finding_site="wrist joint",
                                 laterality="R") for p, ds in zip(probs, images, strict=True))
    f = Findings("synovitis_sgs", "0.1.0-demo", classifications=items,
                 summary=Classification("grade_2", probs[1], finding_site="wrist joint", laterality="R"),
                 notes=("variant SGS; EULAR-OMERACT combined grade 0-3",))
    return ModelResult(card("synovitis_sgs", "RA synovitis grade, static greyscale (SGS, ResNet)", labels,
                            SYNOVITIS), f, images, "series")


def gout_series() -> ModelResult:
    images = [make_us(seed=4, instance_number=i) for i in (1, 2, 3)]
    ps = (0.2, 0.8, 0.4)
    items = tuple(Classification("abnormal" if p >= 0.5 else "normal", {"normal": 1 - p, "abnormal": p},
                                 source=ref(ds), finding_site="first metatarsophalangeal joint", laterality="L")
                  for p, ds in zip(ps, images, strict=True))
    f = Findings("gout_mtp1", "0.1.0-demo", classifications=items,
                 summary=Classification("abnormal", {"normal": 0.2, "abnormal": 0.8},
                                        finding_site="first metatarsophalangeal joint", laterality="L"),
                 notes=("views: image 1: dorsal, image 2: medial, image 3: plantar",))
    return ModelResult(card("gout_mtp1", "Gout at the first MTP joint (ResNet-50)", ("normal", "abnormal"), GOUT),
                       f, images, "series")


def elastography_image() -> ModelResult:
    us = make_us(seed=5)
    labels = tuple(f"Tsukuba {k}" for k in range(1, 6))
    p = {"Tsukuba 1": 0.05, "Tsukuba 2": 0.6, "Tsukuba 3": 0.2, "Tsukuba 4": 0.1, "Tsukuba 5": 0.05}
    pixels = np.zeros((int(us.Rows), int(us.Columns), 3), dtype=np.uint8)
    pixels[..., 0] = 200
    image = GeneratedImage(pixels, ELASTO_DESCRIPTION, ref(us), photometric="RGB")
    f = Findings("breast_elastography", "0.1.0-demo",
                 classifications=(Classification("Tsukuba 2", p, source=ref(us), finding_site="breast"),),
                 images=(image,), notes=("AI-generated virtual elastography from the B-mode image",))
    return ModelResult(card("breast_elastography", "Breast US virtual strain elastography (Transformer-UNet GAN)",
                            labels, ELASTO), f, [us], "series", outputs=("sr", "sc"))


def hand_radiograph() -> ModelResult:
    dx = make_dx(seed=11)
    labels = ("KL 0", "KL 1", "KL 2", "KL 3", "KL 4")
    joints = [("MCP2", (10.0, 12.0, 30.0, 28.0), 2), ("PIP3", (40.0, 20.0, 58.0, 34.0), 0)]
    detections = []
    for name, box, grade in joints:
        p = {lab: (0.7 if k == grade else 0.075) for k, lab in enumerate(labels)}
        detections.append(Detection(name, box, 0.9, ref(dx), laterality="L",
                                    grade=Classification(labels[grade], p, source=ref(dx),
                                                         finding_site="finger joint", laterality="L")))
    measurements = (Measurement("left hand KL sum", 2.0, "1", ref(dx)),
                    Measurement("left hand joints KL 4", 0.0, "1", ref(dx)))
    f = Findings("hand_joints", "0.1.0-demo", detections=tuple(detections), measurements=measurements,
                 notes=("Schemes reported: KL",))
    return ModelResult(card("hand_joints", "Hand radiograph joint grades (UNet + grader)", labels, HAND),
                       f, [dx], "series")


#: every bundled model family, by the model id its result carries
EVERY_MODEL: dict[str, Callable[[], ModelResult]] = {
    "lge_qa": lge_slice,
    "synovitis_sgs": synovitis_series,
    "gout_mtp1": gout_series,
    "breast_elastography": elastography_image,
    "hand_joints": hand_radiograph,
}
