"""The models a service (or a worker process) serves: built once from settings and routes.

Both the service process and each worker process build their models here, so the listener's
process and the workers agree on which models are loaded and why one is unavailable.
"""

from __future__ import annotations

from collections.abc import Mapping

from models.base import ClinicalModel
from models.checkpoint import ModelUnavailable
from models.registry import Factory, ModelSpec, build_model
from sidecar.routing.rules import Route
from sidecar.settings import Settings


def load_models(settings: Settings, routes: list[Route], factories: Mapping[str, str | Factory]) -> tuple[
    dict[str, ClinicalModel], dict[str, str]
]:
    """Build every model a route needs; returns (models, {model_id: why unavailable})."""
    wanted = {r.model for r in routes if r.enabled}
    models: dict[str, ClinicalModel] = {}
    unavailable: dict[str, str] = {}
    for model_id in sorted(wanted):
        entry = settings.models.get(model_id)
        if entry is None:
            unavailable[model_id] = "not listed in models.yaml"
            continue
        if not entry.enabled:
            unavailable[model_id] = "disabled in models.yaml"
            continue
        spec = ModelSpec(model_id, settings.model_weights(model_id), entry.sha256, entry.options,
                         settings.model_backend(model_id))
        try:
            models[model_id] = build_model(spec, {**factories, model_id: entry.factory} if entry.factory else factories)
        except ModelUnavailable as exc:
            unavailable[model_id] = str(exc)
    return models, unavailable
