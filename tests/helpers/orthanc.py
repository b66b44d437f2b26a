"""A real Orthanc (Debian package `orthanc`) for integration and end-to-end tests.

`Orthanc` writes a config into a temporary folder (storage and index there too), starts
`/usr/sbin/Orthanc` on free ports with TCP_NODELAY=1, waits for its REST API and stops it by
PID. REST calls go to 127.0.0.1 only.

Orthanc 1.10 has no option to bind its DICOM or HTTP server to one address: both listen on
every interface. "RemoteAccessAllowed": false makes the HTTP server refuse every client but
localhost, and the tests only ever connect to 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.helpers.ports import free_port, nodelay_env
from tests.helpers.processes import NotReady, read_tail, stop_by_pid, wait_until_ready

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 30.0
ORTHANC_BINARY = "/usr/sbin/Orthanc"
#: Debian package `orthanc-dicomweb`: QIDO-RS, WADO-RS, STOW-RS and WADO-URI.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"
WADO_ROOT = "/wado"


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed (the message carries the HTTP status)."""


class Orthanc:
    """Orthanc on loopback with a generated config; a context manager.

    `modalities` maps a name to (AE title, port) of peers Orthanc may push to (e.g. the
    sidecar's listener), all on 127.0.0.1. `dicomweb=True` loads the DICOMweb plugin under
    `/dicom-web` (and WADO-URI under `/wado`); its `Host` is left unset, so the bulk-data URLs
    in its answers keep the port the client asked on.
    """

    def __init__(
        self, modalities: dict[str, tuple[str, int]] | None = None, ae_title: str = "ORTHANC",
        extra_config: dict[str, Any] | None = None, *, dicomweb: bool = False,
    ) -> None:
        self.dicomweb = dicomweb
        self.ae_title = ae_title
        self.host = HOST
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.modalities = dict(modalities or {})
        self._extra = dict(extra_config or {})
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path()

    # -- config and lifecycle -------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        storage = str(self.workdir / "storage")
        return {
            "Name": "sidecar-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {name: [aet, HOST, port] for name, (aet, port) in self.modalities.items()},
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,  # release pushes at once, not 5 s later
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "StableAge": 2,
            "TcpNoDelay": True,
            **self._dicomweb_config(),
            **self._extra,
        }

    def _dicomweb_config(self) -> dict[str, Any]:
        if not self.dicomweb:
            return {}
        return {
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": True,
                         "WadoRoot": WADO_ROOT, "Ssl": False, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
        }

    def start(self) -> Orthanc:
        if not Path(ORTHANC_BINARY).exists() and shutil.which("Orthanc") is None:
            raise OrthancError("Orthanc not found: install the Debian package 'orthanc'")
        if self.dicomweb and not DICOMWEB_PLUGIN.exists():
            raise OrthancError(f"Orthanc's DICOMweb plugin not found at {DICOMWEB_PLUGIN}: "
                               "install the Debian package 'orthanc-dicomweb' (scripts/install.sh)")
        binary = ORTHANC_BINARY if Path(ORTHANC_BINARY).exists() else str(shutil.which("Orthanc"))
        self._tmp = tempfile.TemporaryDirectory(prefix="orthanc-")
        self.workdir = Path(self._tmp.name)
        (self.workdir / "tmp").mkdir()
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=nodelay_env(), cwd=self.workdir
            )
        try:
            wait_until_ready(self._proc, self._answers, name="Orthanc", what="answer /system",
                             timeout_s=START_TIMEOUT_S, log_tail=self.log_text, poll_s=0.1)
        except NotReady as exc:
            self.stop()
            raise OrthancError(str(exc)) from exc
        return self

    def _answers(self) -> bool:
        try:
            self.rest("GET", "/system", timeout_s=1.0)
        except (OrthancError, OSError):
            return False
        return True

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_by_pid(proc, STOP_TIMEOUT_S, kill_wait_s=STOP_TIMEOUT_S)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def log_text(self) -> str:
        return read_tail(self.log_path, 4000)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- REST -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        scheme = "https" if self._extra.get("SslEnabled") else "http"
        return f"{scheme}://{HOST}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS) when started with `dicomweb=True`."""
        return self.base_url + DICOMWEB_ROOT

    def rest(
        self, method: str, path: str, body: bytes | str | dict[str, Any] | list[Any] | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> Any:
        """Call the REST API on 127.0.0.1; JSON answers are decoded, others returned as bytes."""
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        data: bytes | None
        headers = {}
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data, headers["Content-Type"] = body, "application/dicom"
        elif isinstance(body, str):
            data, headers["Content-Type"] = body.encode(), "text/plain"
        else:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        headers.update(self._auth_header())
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=timeout_s) as rsp:
                raw = rsp.read()
                ctype = rsp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise OrthancError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        if "json" in ctype:
            return json.loads(raw) if raw else None
        return raw

    def _auth_header(self) -> dict[str, str]:
        """Basic auth as the first RegisteredUsers entry, when the test turned authentication on."""
        users = self._extra.get("RegisteredUsers") or {}
        if not self._extra.get("AuthenticationEnabled") or not users:
            return {}
        user, password = next(iter(users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def upload(self, path: Path | str) -> dict[str, Any]:
        """POST a DICOM file to /instances; Orthanc's answer (ID, ParentSeries, Status...)."""
        result: dict[str, Any] = self.rest("POST", "/instances", Path(path).read_bytes())
        return result

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        result: list[str] = self.rest("GET", "/instances")
        return result

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.rest("GET", f"/instances/{orthanc_id}/simplified-tags")
        return result

    def instance_file(self, orthanc_id: str) -> bytes:
        result: bytes = self.rest("GET", f"/instances/{orthanc_id}/file")
        return result

    def push_series(self, modality_name: str, series_orthanc_id: str) -> Any:
        """C-STORE a series to a configured modality (synchronous POST /modalities/{name}/store)."""
        return self.rest(
            "POST", f"/modalities/{modality_name}/store", {"Resources": [series_orthanc_id], "Synchronous": True}
        )

    def find_instances(self, sop_instance_uid: str) -> list[str]:
        """Orthanc IDs of instances with this SOP Instance UID (empty when not stored)."""
        result: list[str] = self.rest(
            "POST", "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
        )
        return result

    def wait_for_instance(self, sop_instance_uid: str, timeout_s: float = 10.0) -> list[str]:
        """Poll `find_instances` until the instance is there; raises TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find_instances(sop_instance_uid)
            if found:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"instance not in Orthanc after {timeout_s} s")
            time.sleep(0.05)


# No proxy: a proxy from the environment would send loopback traffic elsewhere. The helper's own
# REST calls to an https Orthanc (a test certificate) skip verification: the code under test
# verifies, the helper only sets up and reads back.
_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=_UNVERIFIED))

__all__ = ["Orthanc", "OrthancError"]
