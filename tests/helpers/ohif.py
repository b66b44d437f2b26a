"""The OHIF viewer (npm `@ohif/app`, its built `dist/`) served same-origin with a DICOMweb PACS.

`OhifServer` serves the static app from `.ohif/<version>/dist` (scripts/install.sh --test puts it
there) on 127.0.0.1, answers `/app-config.js` with a config that points OHIF's one data source at
this same origin, and forwards `/dicom-web/...` and `/wado...` to Orthanc's DICOMweb plugin, so the
browser never makes a cross-origin request (no CORS). Every other path that is not a file gets
`index.html` (OHIF routes on the client: `/viewer?StudyInstanceUIDs=...`).

What it took to make OHIF 3.x load in a test (issue 16): the config must define
`httpErrorHandler` (else every load error surfaces as "handler is not a function"), and the
bulk-data URLs Orthanc writes must keep the port the request came on (leave `DicomWeb.Host` unset).
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

OHIF_VERSION = "3.12.0"  # pinned in scripts/install.sh too
REPO_ROOT = Path(__file__).resolve().parents[2]
OHIF_DIST = REPO_ROOT / ".ohif" / OHIF_VERSION / "dist"
HOST = "127.0.0.1"
PROXY_TIMEOUT_S = 60.0
_PROXIED = ("/dicom-web", "/wado")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-authorization", "proxy-authenticate", "host", "content-length"})


class OhifMissing(RuntimeError):
    """The OHIF build is not installed (run scripts/install.sh --test)."""


def app_config(origin: str) -> str:
    """OHIF's `window.config`: one DICOMweb data source on this origin, study list on."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "wadoUriRoot": f"{origin}/wado",
            "qidoRoot": f"{origin}/dicom-web",
            "wadoRoot": f"{origin}/dicom-web",
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return (
        "window.config = " + json.dumps(config, indent=1) + ";\n"
        # A function cannot travel in JSON; without it OHIF reports every load error as
        # "handler is not a function" instead of the error.
        "window.config.httpErrorHandler = function (error) {\n"
        "  console.warn('OHIF http error', error && error.status);\n"
        "};\n"
    )


class OhifServer:
    """OHIF's dist and a DICOMweb forwarder on one loopback port; a context manager."""

    def __init__(self, dicomweb_base: str, dist: Path = OHIF_DIST) -> None:
        """`dicomweb_base`: the PACS's HTTP origin (e.g. Orthanc's `http://127.0.0.1:PORT`)."""
        if not (dist / "index.html").is_file():
            raise OhifMissing(f"OHIF's built app not found in {dist}: run scripts/install.sh --test")
        self.dist = dist.resolve()
        upstream = urlsplit(dicomweb_base)
        if upstream.hostname != HOST or upstream.port is None:
            raise ValueError("the DICOMweb upstream must be http://127.0.0.1:PORT")
        self._upstream_port = upstream.port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        handler = _handler_class(self)
        self._server = ThreadingHTTPServer((HOST, 0), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- request handling (called from the handler threads) -------------------------------

    def static_file(self, path: str) -> Path:
        """The file for a URL path, or index.html for the client-side routes."""
        rel = path.lstrip("/")
        candidate = (self.dist / rel).resolve() if rel else self.dist / "index.html"
        if candidate.is_file() and candidate.is_relative_to(self.dist):
            return candidate
        return self.dist / "index.html"

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(HOST, self._upstream_port, timeout=PROXY_TIMEOUT_S)
        try:
            conn.request(method, path, body=body, headers=headers)
            rsp = conn.getresponse()
            data = rsp.read()
            kept = [(k, v) for k, v in rsp.getheaders() if k.lower() not in _HOP_BY_HOP]
            return rsp.status, kept, data
        finally:
            conn.close()


def _handler_class(owner: OhifServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return  # quiet: the test reads OHIF's state, not an access log

        def _proxied(self) -> bool:
            path = urlsplit(self.path).path
            return any(path == p or path.startswith((p + "/", p + "?")) for p in _PROXIED)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            try:
                status, rsp_headers, data = owner.forward(self.command, self.path, headers, body)
            except OSError as exc:
                self._send(502, b"upstream: " + type(exc).__name__.encode(), "text/plain")
                return
            self.send_response(status)
            for k, v in rsp_headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _send(self, status: int, data: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            if self._proxied():
                self._forward()
                return
            path = urlsplit(self.path).path
            if path == "/app-config.js":
                self._send(200, app_config(owner.url).encode(), "application/javascript")
                return
            file = owner.static_file(path)
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if file.suffix == ".wasm":
                ctype = "application/wasm"
            self._send(200, file.read_bytes(), ctype)

        do_HEAD = do_GET

        def do_POST(self) -> None:
            if self._proxied():
                self._forward()
            else:
                self._send(405, b"not allowed", "text/plain")

    return Handler





#: Browser flags: OHIF renders with WebGL, which headless Chromium provides through SwiftShader
#: (with --disable-gpu OHIF gets no WebGL context and shows nothing).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]

#: Hides OHIF's first-visit tour (shepherd.js), whose overlay would swallow every click.
HIDE_TOUR_SCRIPT = (
    "document.addEventListener('DOMContentLoaded', () => {"
    " const st = document.createElement('style');"
    " st.textContent = '.shepherd-element, .shepherd-modal-overlay-container { display: none !important; }';"
    " document.head.appendChild(st); });"
)

#: JS: how OHIF parsed the study's SR display sets (its own displaySetService) and what its
#: viewports and the SR display tool hold (cornerstone3D, exposed by OHIF on window).
PROBE_SCRIPT = """() => {
  const s = window.services;
  const sets = s.displaySetService.getActiveDisplaySets();
  const text = v => (v === undefined || v === null) ? '' : String(v);
  const images = sets.filter(d => d.Modality !== 'SR').map(d => ({
    displaySetInstanceUID: d.displaySetInstanceUID,
    seriesInstanceUID: text(d.SeriesInstanceUID),
    studyInstanceUID: text(d.StudyInstanceUID),
  }));
  const sr = sets.filter(d => d.Modality === 'SR').map(d => ({
    displaySetInstanceUID: d.displaySetInstanceUID,
    studyInstanceUID: text(d.StudyInstanceUID),
    sopInstanceUID: text(d.SOPInstanceUID),
    seriesInstanceUID: text(d.SeriesInstanceUID),
    loaded: !!d.isLoaded,
    instances: (d.instances || []).map(i => text(i.SOPInstanceUID)),
    measurements: (d.measurements || []).map(m => ({
      trackingIdentifier: text(m.TrackingIdentifier),
      trackingUniqueIdentifier: text(m.TrackingUniqueIdentifier),
      labels: (m.labels || []).map(l => [text(l.label), text(l.value)]),
      graphicType: text(m.graphicType),
      nCoords: (m.coords || []).length,
      referencedSOPInstanceUID: text(m.ReferencedSOPInstanceUID),
    })),
  }));
  const viewports = (window.cornerstone ? window.cornerstone.getEnabledElements() : []).map(e => {
    const v = e.viewport;
    let imageId = '';
    try { imageId = text(v.getCurrentImageId && v.getCurrentImageId()); } catch (err) { imageId = ''; }
    return {viewportId: text(v.id), imageId, actors: (v.getActors ? v.getActors() : []).length};
  });
  let annotations = [];
  try {
    const all = window.cornerstoneTools.annotation.state.getAllAnnotations();
    annotations = (Array.isArray(all) ? all : []).filter(
      a => a.metadata && a.metadata.toolName === 'DICOMSRDisplay').map(a => ({
        trackingUniqueIdentifier: text(a.data && a.data.TrackingUniqueIdentifier),
        label: text(a.data && a.data.label),
        referencedImageId: text(a.metadata.referencedImageId),
      }));
  } catch (err) { annotations = []; }
  const errors = Array.from(document.querySelectorAll('[role=alert], .sonner-toast, [data-sonner-toast]'))
    .map(el => el.innerText).filter(t => /wrong|error|fail/i.test(t));
  return {sr, images, viewports, annotations, errors};
}"""

#: JS: put one display set into the active viewport, as a double-click on its thumbnail does.
SHOW_SCRIPT = """(uid) => {
  const g = window.services.viewportGridService;
  g.setDisplaySetsForViewport({viewportId: g.getActiveViewportId(), displaySetInstanceUIDs: [uid]});
}"""
__all__ = ["CHROMIUM_ARGS", "HIDE_TOUR_SCRIPT", "OHIF_DIST", "OHIF_VERSION", "PROBE_SCRIPT", "SHOW_SCRIPT", "OhifMissing", "OhifServer", "app_config"]
