"""Model cards: card.md for people, card.yaml for machines, with the same numbers.

card.yaml uses the field names of ``models.base.ModelCard`` (id, version, name, manufacturer,
intended_use, labels, not_for_clinical_use, reference, published) so the registry can build the
card the SR's device observer carries from it; the rest (metrics with CIs, training data,
limits, weights hash) sits beside them. Metrics come from an evaluation's metrics.json
(``summary``), so the card and the report cannot disagree (Mitchell et al. 2019, "Model Cards
for Model Reporting").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from train.common.reports import PublishedInput, metrics_table, normalise_published

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE — demo weights trained on synthetic phantoms"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CardFiles:
    """The two files a card is written as, and the content of card.yaml."""

    markdown: Path
    yaml: Path
    data: dict[str, Any]


def _summary(metrics: Mapping[str, Any] | str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    if isinstance(metrics, (str, Path)):
        metrics = dict(json.loads(Path(metrics).read_text()))
    summary = dict(metrics.get("summary", {}))
    evaluation = {k: metrics[k] for k in ("task", "n_cases", "threshold", "class_names") if k in metrics}
    return summary, evaluation


def _listed(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def write_model_card(
    out_dir: str | Path,
    *,
    model_id: str,
    version: str,
    name: str,
    intended_use: str,
    inputs_and_routing: str,
    labels: Sequence[str],
    label_rule: str,
    training_data: str,
    metrics: Mapping[str, Any] | str | Path,
    published: Mapping[str, PublishedInput] | None = None,
    limits: str | Sequence[str] = (),
    not_for_clinical_use: bool = True,
    weights_sha256: str,
    manufacturer: str = "dicom-ai-sidecar",
    reference: str = "",
) -> CardFiles:
    """Write card.md and card.yaml into ``out_dir``. ``metrics`` is an evaluation's metrics.json
    (dict or path); ``published`` defaults to the published figures recorded in it. With
    ``not_for_clinical_use`` the warning heads card.md and is a field of card.yaml."""
    if not _SHA256.match(weights_sha256.lower()):
        raise ValueError("weights_sha256 must be 64 hexadecimal characters")
    summary, evaluation = _summary(metrics)
    if published is not None:
        pub = normalise_published(published)
    elif isinstance(metrics, Mapping):
        pub = dict(metrics.get("published", {}))
    else:
        pub = dict(json.loads(Path(metrics).read_text()).get("published", {}))
    limit_list = _listed(limits)
    data: dict[str, Any] = {
        "id": model_id,
        "version": version,
        "name": name,
        "manufacturer": manufacturer,
        "reference": reference,
        "not_for_clinical_use": bool(not_for_clinical_use),
        "warning": NOT_FOR_CLINICAL_USE if not_for_clinical_use else None,
        "intended_use": intended_use,
        "inputs_and_routing": inputs_and_routing,
        "labels": [str(v) for v in labels],
        "label_rule": label_rule,
        "training_data": training_data,
        "weights_sha256": weights_sha256.lower(),
        "evaluation": evaluation,
        "metrics": {
            k: {f: r.get(f) for f in ("label", "value", "ci_low", "ci_high", "sd", "method") if f in r}
            for k, r in summary.items()
        },
        "published": {k: p["value"] for k, p in pub.items() if p.get("value") is not None},
        "published_detail": pub,
        "limits": limit_list,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yaml_path, md_path = out / "card.yaml", out / "card.md"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    md: list[str] = []
    if not_for_clinical_use:
        md += [f"> **{NOT_FOR_CLINICAL_USE}**", ""]
    md += [f"# Model card: {name}", "",
           f"- **Model id**: `{model_id}`", f"- **Version**: {version}", f"- **Manufacturer**: {manufacturer}",
           f"- **Weights sha256**: `{weights_sha256.lower()}`"]
    if reference:
        md.append(f"- **Follows**: {reference}")
    md += ["", "## Intended use", "", intended_use, "",
           "## Inputs and routing", "", inputs_and_routing, "",
           "## Labels", "", ", ".join(f"`{v}`" for v in labels), "", label_rule, "",
           "## Training data", "", training_data, "", "## Performance", ""]
    if evaluation:
        md += [", ".join(f"{k}: {v}" for k, v in evaluation.items() if v is not None), ""]
    md += metrics_table(summary, pub)
    md += ["", "## Known limits", "", *(f"- {x}" for x in limit_list or ["none recorded"])]
    if not_for_clinical_use:
        md += ["", f"**{NOT_FOR_CLINICAL_USE}.** These weights show that the pipeline works end to end; "
               "their numbers describe synthetic phantoms, not patients."]
    md_path.write_text("\n".join(md) + "\n")
    return CardFiles(md_path, yaml_path, data)


__all__ = ["NOT_FOR_CLINICAL_USE", "CardFiles", "write_model_card"]
