"""Typed settings from conf/*.yaml and SIDECAR_* environment variables.

This is the only module that reads configuration. Everything is validated once at start-up;
an error names the file, the key and what was expected (`ConfigError`).

Environment overrides (scalars only): SIDECAR_AE_TITLE, SIDECAR_PORT, SIDECAR_BIND_HOST,
SIDECAR_DATA_DIR, SIDECAR_LOG_LEVEL, SIDECAR_JOURNAL_URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from sidecar.errors import ConfigError
from sidecar.routing.rules import Route


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    max_instance_bytes: int = Field(default=1 << 30, gt=0)
    max_pdu_bytes: int = Field(default=0, ge=0)  # 0 = unlimited, as pynetdicom
    max_associations: int = Field(default=16, ge=1)
    min_free_disk_bytes: int = Field(default=1 << 30, ge=0)  # below this: "out of resources"


class Access(_Strict):
    """Who may associate. An empty allow-list admits any calling AE title."""

    calling_ae_titles: list[str] = []
    require_called_ae_title: bool = True


class DicomDestination(_Strict):
    kind: Literal["dicom"] = "dicom"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    host: str
    port: int = Field(gt=0, lt=65536)
    ae_title: str = Field(min_length=1, max_length=16)
    timeout_s: float = Field(default=30.0, gt=0)


class FolderDestination(_Strict):
    """Copies results into a folder (for demos and for a file-based PACS import)."""

    kind: Literal["folder"] = "folder"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path


Destination = Annotated[DicomDestination | FolderDestination, Field(discriminator="kind")]


class Sender(_Strict):
    max_attempts: int = Field(default=8, ge=1)
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    echo_on_start: bool = True
    poll_s: float = Field(default=0.5, gt=0)
    retention_s: float = Field(default=86400.0, ge=0)  # keep spool files this long after delivery


class Worker(_Strict):
    torch_threads: int = Field(default=2, ge=1)
    max_batch: int = Field(default=16, ge=1)
    poll_s: float = Field(default=0.2, gt=0)


class LogAlertChannel(_Strict):
    kind: Literal["log"] = "log"


class DicomAlertChannel(_Strict):
    kind: Literal["dicom"] = "dicom"
    destination: str  # a destination name


class WebhookAlertChannel(_Strict):
    kind: Literal["webhook"] = "webhook"
    url: str
    token: SecretStr | None = None
    timeout_s: float = Field(default=5.0, gt=0)


AlertChannel = Annotated[
    LogAlertChannel | DicomAlertChannel | WebhookAlertChannel, Field(discriminator="kind")
]


class ServiceSettings(_Strict):
    """conf/sidecar.yaml."""

    ae_title: str = Field(default="SIDECAR", min_length=1, max_length=16)
    bind_host: str = "127.0.0.1"
    port: int = Field(default=11112, gt=0, lt=65536)
    data_dir: Path = Path("var")
    journal_url: str | None = None  # default sqlite:///<data_dir>/journal.sqlite
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    limits: Limits = Limits()
    access: Access = Access()
    worker: Worker = Worker()
    sender: Sender = Sender()
    destinations: list[Destination] = []
    alert_channels: list[AlertChannel] = [LogAlertChannel()]
    web_port: int | None = Field(default=None, gt=0, lt=65536)

    @property
    def journal(self) -> str:
        return self.journal_url or f"sqlite:///{self.data_dir / 'journal.sqlite'}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @model_validator(mode="after")
    def _unique_destinations(self) -> ServiceSettings:
        names = [d.name for d in self.destinations]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"destination names must be unique, repeated: {sorted(dupes)}")
        return self


class RoutesFile(_Strict):
    """conf/routes.yaml."""

    routes: list[Route] = []


class ModelEntry(_Strict):
    """One model in conf/models.yaml."""

    weights: Path | None = None  # relative paths are relative to the config folder
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    backend: Literal["inprocess"] = "inprocess"
    enabled: bool = True
    options: dict[str, Any] = {}


class ModelsFile(_Strict):
    """conf/models.yaml."""

    models: dict[str, ModelEntry] = {}


class Settings(_Strict):
    """Everything the composition root needs, validated together."""

    config_dir: Path
    service: ServiceSettings
    routes: list[Route]
    models: dict[str, ModelEntry]

    def model_weights(self, model_id: str) -> Path | None:
        entry = self.models[model_id]
        if entry.weights is None:
            return None
        return entry.weights if entry.weights.is_absolute() else self.config_dir / entry.weights


_ENV = {
    "SIDECAR_AE_TITLE": "ae_title",
    "SIDECAR_PORT": "port",
    "SIDECAR_BIND_HOST": "bind_host",
    "SIDECAR_DATA_DIR": "data_dir",
    "SIDECAR_LOG_LEVEL": "log_level",
    "SIDECAR_JOURNAL_URL": "journal_url",
}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "(file)", f"valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "(top level)", "a mapping of keys to values")
    return data


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(str(path), key, err["msg"]) from exc


def load_settings(config_dir: Path | str = "conf", env: dict[str, str] | None = None) -> Settings:
    """Read sidecar.yaml, routes.yaml and models.yaml from `config_dir`; apply SIDECAR_* env."""
    cdir = Path(config_dir)
    if not cdir.is_dir():
        raise ConfigError(str(cdir), "(folder)", "an existing configuration folder")
    env = dict(os.environ) if env is None else env
    service_path = cdir / "sidecar.yaml"
    raw = _read_yaml(service_path)
    for var, key in _ENV.items():
        if var in env:
            raw[key] = env[var]
    service = _validate(ServiceSettings, raw, service_path)
    routes_path = cdir / "routes.yaml"
    routes = _validate(RoutesFile, _read_yaml(routes_path), routes_path).routes
    models_path = cdir / "models.yaml"
    models = _validate(ModelsFile, _read_yaml(models_path), models_path).models

    names = [r.name for r in routes]
    for i, r in enumerate(routes):
        if names.count(r.name) > 1:
            raise ConfigError(str(routes_path), f"routes.{i}.name", f"a unique name ({r.name!r} repeats)")
        for j, dest in enumerate(r.destinations):
            if dest not in {d.name for d in service.destinations}:
                raise ConfigError(
                    str(routes_path),
                    f"routes.{i}.destinations.{j}",
                    f"a destination defined in sidecar.yaml (no {dest!r})",
                )
    for i, ch in enumerate(service.alert_channels):
        if isinstance(ch, DicomAlertChannel) and ch.destination not in {d.name for d in service.destinations}:
            raise ConfigError(
                str(service_path), f"alert_channels.{i}.destination", f"a destination name (no {ch.destination!r})"
            )
    return Settings(config_dir=cdir, service=service, routes=routes, models=models)
