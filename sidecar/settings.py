"""Typed settings from conf/*.yaml and SIDECAR_* environment variables.

This is the only module that reads configuration. Everything is validated once at start-up;
an error names the file, the key and what was expected (`ConfigError`).

Environment overrides (scalars only): SIDECAR_AE_TITLE, SIDECAR_PORT, SIDECAR_BIND_HOST,
SIDECAR_DATA_DIR, SIDECAR_LOG_LEVEL, SIDECAR_JOURNAL_URL, SIDECAR_NODE_NAME.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from sidecar.errors import ConfigError
from sidecar.routing.rules import Route
from sidecar.tls import DestinationTls, ListenerTls, client_context, server_context


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Listener limits (docs/conformance.md, "Limits" and "Admission")."""

    max_instance_bytes: int = Field(default=1 << 30, gt=0)  # refused as it crosses this, while receiving
    max_pdu_bytes: int = Field(default=1 << 20, ge=0)  # negotiated; a longer PDU aborts; 0 = unlimited
    max_associations: int = Field(default=16, ge=1)
    min_free_disk_bytes: int = Field(default=1 << 30, ge=0)  # below this: "out of resources"
    association_idle_s: float = Field(default=60.0, gt=0)  # an association silent this long is dropped
    request_deadline_s: float = Field(default=10.0, gt=0)  # the whole A-ASSOCIATE-RQ within this of connecting
    pending_per_address: int = Field(default=32, ge=1)  # not-yet-associated connections from one address
    pending_total: int = Field(default=256, ge=1)  # not-yet-associated connections from everyone
    max_request_bytes: int = Field(default=64 * 1024, ge=1024, le=1 << 20)  # longest A-ASSOCIATE-RQ accepted
    listen_backlog: int = Field(default=128, ge=5)
    max_stow_bytes: int = Field(default=1 << 32, gt=0)  # one STOW-RS request body; over it: 413


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedPeer(_Strict):
    """One allow-list entry: a calling AE title, optionally only from some source addresses.

    `addresses` holds addresses or networks (`10.1.2.3`, `10.1.0.0/16`, `::1`); empty admits the
    AE title from anywhere.
    """

    ae_title: str = Field(min_length=1, max_length=16)
    addresses: list[IpNetwork] = []

    def admits(self, calling_ae: str, peer: str) -> bool:
        if calling_ae.strip() != self.ae_title.strip():
            return False
        if not self.addresses:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.addresses)


class Access(_Strict):
    """Who may associate (checked at A-ASSOCIATE-RQ, before any data).

    A caller is admitted when its AE title is in `calling_ae_titles` (from any address) or
    matches an `allowed` entry (AE title, and source address when the entry lists some).
    Both empty admits any caller.
    """

    calling_ae_titles: list[str] = []
    allowed: list[AllowedPeer] = []
    require_called_ae_title: bool = True

    @property
    def restricted(self) -> bool:
        return bool(self.calling_ae_titles or self.allowed)

    def admits(self, calling_ae: str, peer: str) -> bool:
        if not self.restricted:
            return True
        name = calling_ae.strip()
        if name in {t.strip() for t in self.calling_ae_titles}:
            return True
        return any(entry.admits(name, peer) for entry in self.allowed)


class DicomDestination(_Strict):
    kind: Literal["dicom"] = "dicom"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    host: str
    port: int = Field(gt=0, lt=65536)
    ae_title: str = Field(min_length=1, max_length=16)
    timeout_s: float = Field(default=30.0, gt=0)
    tls: DestinationTls | None = None


class FolderDestination(_Strict):
    """Copies results into a folder (for demos and for a file-based PACS import)."""

    kind: Literal["folder"] = "folder"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path


class DicomwebDestination(_Strict):
    """STOW-RS (PS3.18 10.5) to a DICOMweb server: results are POSTed to `{url}/studies`.

    `url` is the DICOMweb root (e.g. `https://pacs.example/dicom-web`). The request carries
    `auth_header: <value>` when a value is given, either in the file as the secret `auth` or
    from the environment variable named by `auth_env` (read once at start-up; a missing
    variable stops the start). `tls` verifies an https server against `ca_file` (default: the
    system's trust store) and may present a client certificate; `server_name` is DICOM-only.
    """

    kind: Literal["dicomweb"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(pattern=r"^https?://[^/\s]+(/[^\s]*)?$")
    auth_header: str = Field(default="Authorization", pattern=r"^[A-Za-z0-9-]+$")
    auth: SecretStr | None = None
    auth_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(default=30.0, gt=0)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)  # files per POST, summed
    tls: DestinationTls | None = None

    @model_validator(mode="after")
    def _one_auth_source(self) -> DicomwebDestination:
        if self.auth is not None and self.auth_env is not None:
            raise ValueError("give auth or auth_env, not both")
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls needs an https:// url")
        if self.tls is not None and self.tls.server_name is not None:
            raise ValueError("tls.server_name is for DICOM destinations; the url's host is checked")
        return self

    def with_auth_from(self, env: dict[str, str]) -> DicomwebDestination:
        """This destination with `auth` read from `env[auth_env]` (load_settings calls it once)."""
        if self.auth_env is None:
            return self
        value = env.get(self.auth_env)
        if not value:
            raise ValueError(f"the environment variable {self.auth_env} (a header value)")
        return self.model_copy(update={"auth": SecretStr(value)})


Destination = Annotated[DicomDestination | FolderDestination | DicomwebDestination, Field(discriminator="kind")]


class Sender(_Strict):
    max_attempts: int = Field(default=8, ge=1)
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    echo_on_start: bool = True
    poll_s: float = Field(default=0.5, gt=0)
    retention_s: float = Field(default=86400.0, ge=0)  # keep spool files this long after delivery
    history_s: float = Field(default=30 * 86400.0, ge=0)  # keep a finished series' journal rows this long


class Worker(_Strict):
    torch_threads: int = Field(default=2, ge=1)
    max_batch: int = Field(default=16, ge=1)
    poll_s: float = Field(default=0.2, gt=0)
    max_attempts: int = Field(default=4, ge=1)  # claims of one job before it is quarantined
    retry_initial_s: float = Field(default=2.0, gt=0)  # backoff after a transient failure, doubling
    retry_max_s: float = Field(default=120.0, gt=0)
    max_decoded_instance_bytes: int = Field(default=1 << 30, gt=0)  # checked from the header, before decode
    max_decoded_job_bytes: int = Field(default=4 << 30, gt=0)
    isolation: Literal["thread", "process"] = "thread"  # process: inference in worker processes
    processes: int = Field(default=1, ge=1)  # general worker processes, beside the streaming one
    # the streaming worker process's niceness: below 0 it takes the CPU ahead of the listener and
    # the series work under a burst (needs root or CAP_SYS_NICE; refused: logged, runs at 0)
    streaming_nice: int = Field(default=-5, ge=-20, le=19)
    rss_budget_bytes: int = Field(default=2 << 30, gt=0)  # a worker process above this is replaced
    job_timeout_s: float = Field(default=300.0, gt=0)  # a job running longer: its process is replaced
    stop_grace_s: float = Field(default=10.0, gt=0)  # worker processes still alive after it are killed
    start_timeout_s: float = Field(default=120.0, gt=0)  # the listener opens once workers are ready, or after this


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


class Web(_Strict):
    """The HTTP side port: /healthz, /readyz, /metrics, the timeline API and the dashboard."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback by default; the dashboard has no TLS of its own
    port: int = Field(default=8080, ge=0, lt=65536)  # 0: any free port (tests)
    # Host header values the web port answers (DNS rebinding guard); "*" in an entry as starlette allows
    allowed_hosts: list[str] = ["127.0.0.1", "localhost", "[::1]"]
    admin_token: SecretStr | None = None  # the dashboard's retry button needs it; None: retry is off
    show_patient_names: bool = False  # a site may turn this on; the dashboard shows none by default


class ServiceSettings(_Strict):
    """conf/sidecar.yaml."""

    ae_title: str = Field(default="SIDECAR", min_length=1, max_length=16)
    bind_host: str = "127.0.0.1"
    port: int = Field(default=11112, gt=0, lt=65536)
    data_dir: Path = Path("var")
    journal_url: str | None = None  # default sqlite:///<data_dir>/journal.sqlite; or postgresql://... (shared)
    journal_lease_s: float = Field(default=30.0, gt=0)  # a dead node's claims pass to others after this
    node_name: str | None = Field(default=None, min_length=1)  # names this sidecar's claims; default host:port
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    limits: Limits = Limits()
    access: Access = Access()
    tls: ListenerTls | None = None
    worker: Worker = Worker()
    sender: Sender = Sender()
    destinations: list[Destination] = []
    alert_channels: list[AlertChannel] = [LogAlertChannel()]
    web: Web = Web()

    @property
    def journal(self) -> str:
        return self.journal_url or f"sqlite:///{self.data_dir / 'journal.sqlite'}"

    @property
    def node(self) -> str:
        """This sidecar's name in journal claims: stable across restarts, unique among the nodes."""
        return self.node_name or f"{socket.gethostname()}:{self.port}"

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


class InProcessBackendEntry(_Strict):
    """The model's torch module in the sidecar's process (the default)."""

    kind: Literal["inprocess"] = "inprocess"

    def to_config(self, config_dir: Path) -> Any:
        from models.backends import InProcessConfig

        return InProcessConfig()


class OnnxNetworkEntry(_Strict):
    """The ONNX file of one network of a model that has several (hand_joints: detector, grader)."""

    model_file: Path  # relative paths are relative to the config folder
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class OnnxRuntimeBackendEntry(_Strict):
    """ONNX files from `python -m train <model> export --format onnx`, run by onnxruntime in
    process (`pip install .[onnx]`): `model_file` for a model of one network, or `networks`
    (network name -> its file) for a model of several; one of the two."""

    kind: Literal["onnxruntime"]
    model_file: Path | None = None  # relative paths are relative to the config folder
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    threads: int = Field(default=0, ge=0)  # onnxruntime intra-op threads; 0: its default
    networks: dict[str, OnnxNetworkEntry] = {}

    @model_validator(mode="after")
    def _one_way_to_name_files(self) -> OnnxRuntimeBackendEntry:
        if (self.model_file is None) == (not self.networks):
            raise ValueError("name the exported file in model_file (a model of one network) or one file per "
                             "network in networks (hand_joints: detector, grader), not both or neither")
        if self.networks and self.sha256 is not None:
            raise ValueError("sha256 belongs to each network's entry when networks are named")
        return self

    def to_config(self, config_dir: Path) -> Any:
        from models.backends import OnnxNetworkFile, OnnxRuntimeConfig

        def resolve(path: Path) -> Path:
            return path if path.is_absolute() else config_dir / path

        networks = tuple(OnnxNetworkFile(name, resolve(e.model_file), e.sha256) for name, e in self.networks.items())
        return OnnxRuntimeConfig(model_file=resolve(self.model_file) if self.model_file is not None else None,
                                 sha256=self.sha256, threads=self.threads, networks=networks)


class TritonBackendEntry(_Strict):
    """Triton Inference Server endpoints over gRPC (`pip install .[triton]`): one try, one retry
    on another endpoint, all within `deadline_ms`; `priority` 1 jumps Triton's batch queue."""

    kind: Literal["triton"]
    endpoints: list[str] = Field(min_length=1)  # host:port of Triton's gRPC port (8001)
    model_name: str | None = None  # the model's name in the Triton repository; default its id
    deadline_ms: float = Field(default=500.0, gt=0)  # one forward, retry included
    priority: int = Field(default=1, ge=1)  # Triton priority level; 1 is the highest
    max_batch_size: int = Field(default=16, ge=1)  # the repository's max_batch_size
    input_name: str | None = None  # default: the model's own (TorchScript exports use "<name>__0")
    output_name: str | None = None
    cooldown_s: float = Field(default=5.0, ge=0)  # a failed endpoint is tried last this long

    @field_validator("endpoints")
    @classmethod
    def _host_port(cls, v: list[str]) -> list[str]:
        for endpoint in v:
            host, sep, port = endpoint.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"endpoint {endpoint!r} is not host:port")
        return v

    def to_config(self, config_dir: Path) -> Any:
        from models.backends import TritonConfig

        return TritonConfig(endpoints=tuple(self.endpoints), model_name=self.model_name,
                            deadline_ms=self.deadline_ms, priority=self.priority,
                            max_batch_size=self.max_batch_size, input_name=self.input_name,
                            output_name=self.output_name, cooldown_s=self.cooldown_s)


Backend = Annotated[InProcessBackendEntry | OnnxRuntimeBackendEntry | TritonBackendEntry, Field(discriminator="kind")]


class ModelEntry(_Strict):
    """One model in conf/models.yaml. `backend` is `inprocess` (the default; the bare word is
    accepted) or a mapping with `kind: onnxruntime` or `kind: triton` and that backend's keys."""

    weights: Path | None = None  # relative paths are relative to the config folder
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    backend: Backend = InProcessBackendEntry()
    enabled: bool = True
    options: dict[str, Any] = {}
    # A model not built into models/registry.py: "package.module:function" of an installed (or
    # on-path) package, called as f(weights=Path|None, options=dict) -> ClinicalModel. Imported
    # by name, never evaluated (docs/adding-a-model.md).
    factory: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("backend", mode="before")
    @classmethod
    def _bare_kind(cls, v: Any) -> Any:
        if v == "inprocess":
            return {"kind": "inprocess"}
        if isinstance(v, str):
            raise ValueError(f"{v!r} needs its settings: a mapping with kind: {v} (see docs/configuration.md)")
        return v


class ModelsFile(_Strict):
    """conf/models.yaml."""

    models: dict[str, ModelEntry] = {}


class Settings(_Strict):
    """Everything the composition root needs, validated together."""

    config_dir: Path
    service: ServiceSettings
    routes: list[Route]
    models: dict[str, ModelEntry]

    def model_backend(self, model_id: str) -> Any:
        """The `models.backends` config of a model's backend (paths resolved against config_dir)."""
        return self.models[model_id].backend.to_config(self.config_dir)

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
    "SIDECAR_NODE_NAME": "node_name",
}

#: Environment variables for nested keys: (section, key). The admin token is a secret: it comes
#: from the environment (or a site's own untracked config), never from the repository.
_ENV_NESTED = {
    "SIDECAR_WEB_PORT": ("web", "port"),
    "SIDECAR_WEB_ADMIN_TOKEN": ("web", "admin_token"),
}


def absolute_model_paths(entry: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """A copy of one models.yaml entry with its files (weights, the backend's ONNX file or files)
    made absolute against `config_dir`, so the entry can be written into a config elsewhere."""
    def absolute(value: object) -> object:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str((Path(config_dir) / value).resolve())
        return value

    out = dict(entry)
    if "weights" in out:
        out["weights"] = absolute(out["weights"])
    backend = out.get("backend")
    if isinstance(backend, dict):
        backend = dict(backend)
        if "model_file" in backend:
            backend["model_file"] = absolute(backend["model_file"])
        if isinstance(backend.get("networks"), dict):
            backend["networks"] = {name: {**net, "model_file": absolute(net.get("model_file"))}
                                   for name, net in backend["networks"].items()}
        out["backend"] = backend
    return out


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
    for var, (section, key) in _ENV_NESTED.items():
        if var in env:
            if not isinstance(raw.get(section, {}), dict):
                raise ConfigError(str(service_path), section, "a mapping of keys to values")
            raw[section] = {**(raw.get(section) or {}), key: env[var]}
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
    _check_tls(service, service_path)
    service = _resolve_auth(service, service_path, env)
    for i, ch in enumerate(service.alert_channels):
        if isinstance(ch, DicomAlertChannel) and ch.destination not in {d.name for d in service.destinations}:
            raise ConfigError(
                str(service_path), f"alert_channels.{i}.destination", f"a destination name (no {ch.destination!r})"
            )
    return Settings(config_dir=cdir, service=service, routes=routes, models=models)


def _resolve_auth(service: ServiceSettings, path: Path, env: dict[str, str]) -> ServiceSettings:
    """DICOMweb destinations with `auth_env` get the header value from the environment now."""
    if not any(isinstance(d, DicomwebDestination) and d.auth_env for d in service.destinations):
        return service
    resolved: list[DicomDestination | FolderDestination | DicomwebDestination] = []
    for i, dest in enumerate(service.destinations):
        try:
            resolved.append(dest.with_auth_from(env) if isinstance(dest, DicomwebDestination) else dest)
        except ValueError as exc:
            raise ConfigError(str(path), f"destinations.{i}.auth_env", str(exc)) from exc
    return service.model_copy(update={"destinations": resolved})


def _check_tls(service: ServiceSettings, path: Path) -> None:
    """Build every TLS context once, so a missing file, a wrong key password or a bad
    certificate stops the start with the key that names it (the secrets are not shown)."""
    import ssl

    checks: list[tuple[str, Any]] = []
    if service.tls is not None:
        tls = service.tls
        checks.append(("tls", lambda: server_context(tls)))
    for i, dest in enumerate(service.destinations):
        if isinstance(dest, (DicomDestination, DicomwebDestination)) and dest.tls is not None:
            checks.append((f"destinations.{i}.tls", lambda d=dest: client_context(d.tls)))
    for key, build in checks:
        try:
            build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            detail = getattr(exc, "strerror", None) or type(exc).__name__
            if isinstance(exc, ValueError):
                detail = str(exc)
            raise ConfigError(str(path), key, f"readable certificate, key and CA files ({detail})") from exc
