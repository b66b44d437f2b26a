"""Result writers: Findings -> DICOM objects (SR, SC, GSPS, QA alert image), all built by highdicom.

`build_results` is the one entry the pipeline calls; it dispatches on a route's outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydicom import Dataset

from models.base import ModelCard
from models.findings import Findings
from sidecar.dicom.uids import short_uid
from sidecar.errors import ResultError
from sidecar.results.alert_image import build_alert_image
from sidecar.results.gsps import build_gsps
from sidecar.results.sc import build_sc, instance_number_for
from sidecar.results.sr import build_sr

__all__ = ["build_alert_image", "build_gsps", "build_results", "build_sc", "build_sr"]

SUPPORTED_OUTPUTS = frozenset({"sr", "sc", "gsps"})


def build_results(
    findings: Findings,
    sources: Sequence[Dataset],
    card: ModelCard,
    outputs: Sequence[str],
    *,
    input_uid: str,
    kind: str,
    revision: int = 0,
) -> list[Dataset]:
    """Every result object `outputs` asks for: an SR for "sr", one SC per generated image for "sc",
    one GSPS with the detection boxes for "gsps" (none when there are no detections).

    Outputs other writers handle ("alert") are skipped here. Raises ResultError when
    the findings cannot be written, e.g. a generated image about an image not among `sources`.
    """
    if findings.model_id != card.id:
        raise ResultError(f"findings of model {findings.model_id} given with card {card.id}")
    images: list[Dataset] = []
    if "sc" in outputs:
        by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
        nfcu = findings.not_for_clinical_use or card.not_for_clinical_use
        per_source = Counter(image.source.sop_instance_uid for image in findings.images)
        for index, image in enumerate(findings.images, start=1):
            source = by_uid.get(image.source.sop_instance_uid)
            if source is None:
                raise ResultError(
                    f"generated image {index} is about image "
                    f"{short_uid(image.source.sop_instance_uid)}, not among the job's sources"
                )
            images.append(
                build_sc(
                    image,
                    source,
                    card,
                    input_uid=input_uid,
                    index=index,
                    revision=revision,
                    not_for_clinical_use=nfcu,
                    instance_number=(instance_number_for(source, index, revision)
                                     if per_source[image.source.sop_instance_uid] == 1 else None),
                )
            )
    results: list[Dataset] = []
    if "sr" in outputs:
        # The SR lists the images this job produced as evidence, so it references them.
        results.append(
            build_sr(findings, sources, card, input_uid=input_uid, kind=kind, revision=revision, derived=images)
        )
    if "gsps" in outputs and findings.detections:
        results.append(build_gsps(findings, sources, card, input_uid=input_uid, revision=revision))
    return results + images
