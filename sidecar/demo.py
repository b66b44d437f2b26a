"""`sidecar demo`: the whole loop on loopback in under two minutes.

Starts a PACS stand-in (a pynetdicom storage SCP writing files into a folder) and a sidecar with
the bundled conf/ (routes and demo models; only ports, data folder and destination changed),
pushes a phantom series for every installed model, and prints what came back: each SR rendered
as text and the paths of the images.

This module is the one place in sidecar/ that imports train/ (its phantom generators), lazily and
only here: the service itself never does.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from sidecar.app import Sidecar
from sidecar.dicom.status import StoreStatus
from sidecar.logging import configure_logging
from sidecar.results.text import render_sr_text, summarize_sr
from sidecar.settings import absolute_model_paths, load_settings

BUNDLED_CONF = Path(__file__).resolve().parent.parent / "conf"

#: model id -> "module:function" returning a list of phantom Datasets (one series) for the demo.
DEMO_SAMPLES: dict[str, str] = {
    "lge_qa": "train.phantoms.lge:demo_series",
    "synovitis_sgs": "train.phantoms.joint_us:demo_series_sgs",
    "synovitis_dgs": "train.phantoms.joint_us:demo_series_dgs",
    "synovitis_spd": "train.phantoms.joint_us:demo_series",
    "synovitis_dpd": "train.phantoms.joint_us:demo_series_dpd",
    "gout_mtp1": "train.phantoms.mtp1:demo_series",
    "breast_elastography": "train.phantoms.breast:demo_series",
    "hand_joints": "train.phantoms.hand:demo_series",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PacsStandIn:
    """A minimal storage SCP on loopback that writes what it receives into a folder."""

    def __init__(self, folder: Path, ae_title: str = "DEMOPACS") -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = _free_port()
        self.received: list[Path] = []
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        self.received.append(path)
        return StoreStatus.SUCCESS

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None  # pynetdicom's built-in contexts all name one
            ae.add_supported_context(cx.abstract_syntax)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def _send(datasets: list[Dataset], port: int, called: str) -> list[int]:
    ae = AE(ae_title="DEMOCONSOLE")
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("the demo sidecar refused the association")
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def _sample(model_id: str) -> Callable[..., list[Dataset]] | None:
    target = DEMO_SAMPLES.get(model_id)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    try:
        sample: Callable[..., list[Dataset]] = getattr(importlib.import_module(module), attr)
        return sample
    except (ModuleNotFoundError, AttributeError):
        return None


def write_demo_config(folder: Path, pacs: PacsStandIn, bundled: Path = BUNDLED_CONF) -> Path:
    """Copy the bundled conf/ with the demo's ports, data folder and destination."""
    conf = folder / "conf"
    shutil.copytree(bundled, conf)
    svc = yaml.safe_load((conf / "sidecar.yaml").read_text()) or {}
    svc.update({
        "port": _free_port(), "data_dir": str(folder / "var"), "log_level": "warning", "log_format": "console",
        "destinations": [{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port,
                          "ae_title": pacs.ae_title}],
    })
    svc.setdefault("limits", {})["min_free_disk_bytes"] = 0
    svc["web"] = {**(svc.get("web") or {}), "enabled": True, "port": 0}  # any free port
    svc["alert_channels"] = [{"kind": "log"}, {"kind": "dicom", "destination": "pacs"}]  # show the alert image
    svc.setdefault("sender", {}).update({"echo_on_start": False, "poll_s": 0.1})
    (conf / "sidecar.yaml").write_text(yaml.safe_dump(svc))
    models = yaml.safe_load((conf / "models.yaml").read_text()) or {}
    entries = models.get("models") or {}
    for model_id, entry in entries.items():  # weights and ONNX files, relative to the bundled conf/
        if entry:
            entries[model_id] = absolute_model_paths(entry, bundled)
    (conf / "models.yaml").write_text(yaml.safe_dump(models))
    routes = yaml.safe_load((conf / "routes.yaml").read_text()) or {}
    for r in routes.get("routes") or []:
        r["quiet_s"] = min(float(r.get("quiet_s", 10)), 2.0)  # the demo does not wait long
    (conf / "routes.yaml").write_text(yaml.safe_dump(routes))
    return conf


def run_demo(
    keep: Path | None = None, timeout_s: float = 90.0, out: Callable[[str], None] = print, verbose: bool = False
) -> int:
    configure_logging("warning", "console")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    pacs = PacsStandIn(work / "pacs")
    pacs.start()
    app = Sidecar(load_settings(write_demo_config(work, pacs)))
    started = time.monotonic()
    try:
        app.start()
        out(f"sidecar on 127.0.0.1:{app.port}, PACS stand-in on 127.0.0.1:{pacs.port}; files in {work}")
        out("Demo weights are trained on synthetic phantoms: NOT FOR CLINICAL USE.")
        if app.web is not None:
            out(f"dashboard: {app.web.url}")
        if not app.models:
            out("no model is installed: see conf/models.yaml")
            return 1
        for model_id, why in sorted(app.unavailable.items()):
            out(f"- {model_id}: not installed ({why})")
        sent = 0
        for model_id in sorted(app.models):
            make = _sample(model_id)
            if make is None:
                out(f"- {model_id}: no phantom generator for the demo")
                continue
            series = make(seed=7)
            statuses = _send(series, app.port, app.settings.service.ae_title)
            ok = sum(s == 0 for s in statuses)
            out(f"- {model_id}: pushed {ok}/{len(series)} phantom instances "
                f"({series[0].get('Modality', '?')}, '{series[0].get('SeriesDescription', '')}')")
            sent += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            summary = app.journal.summary()
            busy = bool(summary["series"].get("receiving")) or any(
                summary["jobs"].get(s) for s in ("queued", "running"))
            pending = any(k.endswith("/pending") and v for k, v in summary["outbox"].items())
            if sent and not busy and not pending:
                break
            time.sleep(0.2)
        out(f"\nback in the PACS after {time.monotonic() - started:.1f} s: {len(pacs.received)} objects")
        for path in sorted(pacs.received):
            ds = pydicom.dcmread(path)
            if ds.Modality == "SR":
                out(f"\nSR {path.name}  [{ds.get('SeriesDescription', '')}]")
                for line in summarize_sr(ds):
                    out(f"    {line}")
                if verbose:
                    out(render_sr_text(ds))
            else:
                out(f"\nimage: {path}  ({ds.get('SeriesDescription', '')})")
        return 0 if pacs.received else 1
    finally:
        app.stop()
        pacs.stop()
