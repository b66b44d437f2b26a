"""Model id -> factory, weights verification, warm-up, and the predicates models give the router.

Factories and predicates are named here as "module:attribute" strings of this package, so a model
that is not installed (its module missing) is simply unavailable, never a crash at import. Nothing
in configuration is imported or evaluated: configuration names a model id, and only ids listed here
(or handed in by a test) can be built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom import Dataset

from models.backends import (
    BackendConfig,
    BackendError,
    BackendUnavailable,
    InProcessConfig,
    SwappableForward,
    TensorBackend,
    open_backend,
)
from models.base import ClinicalModel
from models.checkpoint import ModelUnavailable, verify_weights

log = structlog.get_logger("models.registry")

Predicate = Callable[[Dataset], bool]
Factory = Callable[..., ClinicalModel]

#: model id -> "module:function"; the function is called as f(weights=Path|None, options=dict).
FACTORIES: dict[str, str] = {
    "lge_qa": "models.lge_qa.wrapper:build",
    "synovitis_sgs": "models.synovitis.wrapper:build_sgs",
    "synovitis_dgs": "models.synovitis.wrapper:build_dgs",
    "synovitis_spd": "models.synovitis.wrapper:build_spd",
    "synovitis_dpd": "models.synovitis.wrapper:build_dpd",
    "gout_mtp1": "models.gout_mtp1.wrapper:build",
    "breast_elastography": "models.elastography.wrapper:build",
    "hand_joints": "models.hand_joints.wrapper:build",
}

#: predicate name -> "module:function" taking a Dataset (header only) and returning bool.
PREDICATES: dict[str, str] = {
    "mr.is_lge_psir": "models.lge_qa.routing:is_lge_psir",
    "us.has_doppler": "models.us.predicates:has_doppler",
    "us.is_cine": "models.us.predicates:is_cine",
}

#: predicate name -> "module:function" taking a Dataset and returning [(cue, ok, detail)], so
#: `sidecar route explain` can show each cue a predicate weighed.
PREDICATE_EXPLAINERS: dict[str, str] = {
    "mr.is_lge_psir": "models.lge_qa.routing:explain_cues",
    "us.has_doppler": "models.us.predicates:explain_doppler",
    "us.is_cine": "models.us.predicates:explain_cine",
}


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise ModelUnavailable(f"module {module} is not installed") from exc
        raise
    try:
        return getattr(mod, attr)
    except AttributeError as exc:
        raise ModelUnavailable(f"{module} has no {attr}") from exc


def load_predicates(extra: Mapping[str, Predicate] | None = None) -> dict[str, Predicate]:
    """The predicates whose modules are installed (plus `extra`)."""
    out: dict[str, Predicate] = {}
    for name, target in PREDICATES.items():
        try:
            out[name] = _resolve(target)
        except ModelUnavailable:
            continue
    out.update(extra or {})
    return out


def load_predicate_explainers() -> dict[str, Callable[[Dataset], list[tuple[str, bool, str]]]]:
    """The cue explainers whose modules are installed."""
    out = {}
    for name, target in PREDICATE_EXPLAINERS.items():
        try:
            out[name] = _resolve(target)
        except ModelUnavailable:
            continue
    return out


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to build one model (from conf/models.yaml)."""

    model_id: str
    weights: Path | None
    sha256: str | None
    options: Mapping[str, Any]
    backend: BackendConfig = InProcessConfig()  # where the network forward runs (models/backends)


def build_model(spec: ModelSpec, factories: Mapping[str, str | Factory] | None = None) -> ClinicalModel:
    """Verify weights, build the model, open its backends and warm it; `ModelUnavailable` says why not.

    A remote backend that does not answer the warm-up leaves the model loaded (logged): its jobs
    then fail with their reason, visibly, instead of its routes being switched off at start-up.
    """
    table: dict[str, str | Factory] = {**FACTORIES, **(factories or {})}
    target = table.get(spec.model_id)
    if target is None:
        raise ModelUnavailable(f"no model with id {spec.model_id!r} is known")
    factory: Factory = _resolve(target) if isinstance(target, str) else target
    verify_weights(spec.weights, spec.sha256)
    model = factory(weights=spec.weights, options=dict(spec.options))
    if not isinstance(model, ClinicalModel):
        raise ModelUnavailable(f"factory for {spec.model_id!r} did not return a ClinicalModel")
    if not isinstance(spec.backend, InProcessConfig):
        if not isinstance(model, SwappableForward):
            raise ModelUnavailable(f"model {spec.model_id!r} runs in process only, not on {spec.backend.kind}")
        _open_backends(spec, model)
    warm = getattr(model, "warm_up", None)
    if callable(warm):
        try:
            warm()
        except BackendError as exc:
            if isinstance(spec.backend, InProcessConfig):
                raise
            log.warning("model_warm_up_failed", model=spec.model_id, backend=spec.backend.kind, reason=str(exc)[:300])
    return model


def _open_backends(spec: ModelSpec, model: SwappableForward) -> None:
    """One backend per network of `model` (most have one); if one cannot be opened, those already
    opened are closed and the model is unavailable, saying which network and why."""
    opened: list[TensorBackend] = []
    try:
        for signature in model.tensor_signatures():
            backend = open_backend(spec.backend, signature)
            opened.append(backend)
            model.use_backend(backend, signature.network)
    except BackendUnavailable as exc:
        for backend in opened:
            backend.close()
        raise ModelUnavailable(f"{spec.backend.kind} backend for {spec.model_id!r}: {exc}") from exc
