"""Load: eight dcmtk storescu clients at once while an LGE-like stack streams, one slice at a time.

The real service runs in a subprocess (`tests.helpers.serve_with_test_models`) with production
poll intervals, its web side port on, and a dcmtk storescp as the PACS. Two routes:

- `bench-lge` (instance mode, outputs sr + alert): the LGE QA model with the bundled demo
  weights when they are there (`--model auto`), its threshold forced down so that every slice
  raises an alert (each slice then measures time-to-alert), else the brightness test model on
  mid-grey slices (always uncertain). Slices go over ONE pynetdicom association, as a scanner
  sends them, one every `--interval` seconds.
- `bench-load` (series mode, SR): the brightness test model on each load series once its 200
  instances are in (ImagesInAcquisition), so the single worker also builds big SRs (priority 10,
  behind streaming slices). `--load-route none` leaves the load series unrouted (ingest only).

Phases: (1) unloaded: `--unloaded` LGE slices alone; (2) loaded: `--clients` storescu processes,
each sending `--instances` instances of its own series over one association, started together,
with the LGE stream going on until the last client exits.

Measured:
- instances/s = all load instances / (last storescu exit - first start);
- time to alert, two ways: "ack -> stream" is what a technologist's dashboard sees (the alert's
  arrival on /api/events at this process minus the C-STORE response of its slice); "receipt ->
  publish" is the sidecar's own `sidecar_time_to_alert_seconds` definition (the alert's
  raised_at minus the instance's received_at, both from the alert message);
- peak RSS of the sidecar process (VmHWM from /proc, target < 1.5 GiB);
- zero lost: every storescu exited 0, every instance sent is in the journal and its spool file
  exists, every result reached the PACS (no pending, no dead letters), every LGE slice alerted
  (or was answered "not assessed" by the domain guard, which is never an alert).

    python -m bench.load [--clients 8] [--instances 200] [--size 256] [--unloaded 20]
                         [--interval 0.25] [--model auto|lge_qa|brightness] [--load-route series|none]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from bench.common import (
    REPO,
    machine_note,
    median,
    percentile,
    start_python,
    start_storescp,
    wait_echo,
    wait_idle,
    write_slices,
)
from tests.helpers.dcmtk import _require
from tests.helpers.dicom_factory import fake_uid, make_mr
from tests.helpers.ports import free_port, nodelay_env
from tests.helpers.sidecar import write_config

LGE_DESC = "BENCH LGE PSIR"
LOAD_DESC = "BENCH LOAD"
DEMO_WEIGHTS = REPO / "models" / "lge_qa" / "weights" / "demo.pt"
RSS_TARGET_BYTES = int(1.5 * 1024**3)
ALERT_TIMEOUT_S = 60.0


@dataclass
class Slice:
    sop_uid: str
    phase: str
    acked_at: float = 0.0
    status: int = -1


@dataclass
class AlertSeen:
    arrived_at: float
    raised_at: float
    received_at: float | None


@dataclass
class StreamWatch:
    """Reads the sidecar's /api/events (as the dashboard does) and notes the first alert per slice."""

    url: str
    alerts: dict[str, AlertSeen] = field(default_factory=dict)
    slices: int = 0
    not_assessed: set[str] = field(default_factory=set)  # slices its domain guard answered "not assessed"
    _stop: threading.Event = field(default_factory=threading.Event)
    _connected: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name="sse", daemon=True).start()
        if not self._connected.wait(10):
            raise RuntimeError(f"could not connect to {self.url}")

    def _run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=120) as rsp:
            self._connected.set()
            event = ""
            for raw in rsp:
                if self._stop.is_set():
                    return
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "alert":
                    now = time.time()
                    data = json.loads(line[6:])
                    uid = data.get("instance_uid", "")
                    if uid and uid not in self.alerts:
                        self.alerts[uid] = AlertSeen(now, float(data["raised_at"]), data.get("received_at"))
                elif line.startswith("data: ") and event == "slice":
                    self.slices += 1
                    data = json.loads(line[6:])
                    if data.get("out_of_domain"):
                        self.not_assessed.add(str(data.get("instance_uid", "")))

    def stop(self) -> None:
        self._stop.set()


class RssSampler:
    """Resident set size of a process over time; VmHWM (the kernel's peak) at the end."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _field(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.samples.append(self._field("VmRSS"))
            except OSError:
                return

    def start(self) -> None:
        self._thread.start()

    def peak(self) -> int:
        self._stop.set()
        try:
            return max(self._field("VmHWM"), *self.samples, 0)
        except OSError:
            return max(self.samples, default=0)


class LgeStream:
    """One association, one slice every `interval_s`, as a scanner sends an LGE stack.

    For lge_qa the slices are PSIR phantoms (train/phantoms/lge.py), inside the model's validated
    input domain: a plain synthetic MR image is "not assessed" by its domain guard and never alerts.
    """

    def __init__(self, port: int, size: int, interval_s: float, psir: bool = False) -> None:
        self.port, self.size, self.interval_s, self.psir = port, size, interval_s, psir
        self.sent: list[Slice] = []
        self.lost: str = ""  # why the association ended before the stream did
        self._n = 0
        ae = AE(ae_title="BENCHLGE")
        ae.add_requested_context(MRImageStorage)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR")
        if not self.assoc.is_established:
            raise RuntimeError("the LGE stream could not associate with the sidecar")

    def send_one(self, phase: str) -> Slice:
        self._n += 1
        series, number = divmod(self._n - 1, 12)  # a new stack every 12 slices
        if self.psir:
            ds = _psir_slice(series, number)
        else:
            ds = make_mr(seed=8800 + series, study_uid=fake_uid("bench-load-lge-study"),
                         series_uid=fake_uid("bench-load-lge", series), instance_number=number + 1, size=self.size)
        ds.SeriesDescription = LGE_DESC
        item = Slice(str(ds.SOPInstanceUID), phase)
        rsp = self.assoc.send_c_store(ds)
        item.acked_at = time.time()
        item.status = int(rsp.Status) if "Status" in rsp else -1
        self.sent.append(item)
        return item

    def run(self, phase: str, n: int | None = None, until: threading.Event | None = None) -> None:
        k = 0
        next_at = time.monotonic()
        while (n is not None and k < n) or (until is not None and not until.is_set()):
            if not self.assoc.is_established:
                self.lost = self.lost or f"the sidecar's association ended after {len(self.sent)} slices ({phase})"
                return
            self.send_one(phase)
            k += 1
            next_at += self.interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self.assoc.release()


def _psir_slice(series: int, number: int) -> Any:
    """Slice `number` of PSIR phantom stack `series` (kind lge), the sidecar's LGE input."""
    import numpy as np

    from train.phantoms.lge import lge_slice, psir_dataset

    item = lge_slice(np.random.default_rng(8800 + 100 * series + number), "lge", patient_id=f"PH-BENCH{series}",
                     slice_index=number)
    ds = psir_dataset(item, study_uid=fake_uid("bench-load-lge-study"), series_uid=fake_uid("bench-load-lge", series))
    ds.InstanceNumber = number + 1
    return ds


def _storescu(files: list[Path], port: int, aet: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [_require("storescu"), "-aet", aet, "-aec", "SIDECAR", "127.0.0.1", str(port), *(str(p) for p in files)]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=nodelay_env())


def _stats(values: list[float]) -> str:
    if not values:
        return "(none)"
    return (f"p50 {median(values) * 1000:7.0f} ms  p95 {percentile(values, 95) * 1000:7.0f} ms  "
            f"max {max(values) * 1000:7.0f} ms  (n={len(values)})")


def _journal(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _settled(journal: Path) -> bool:
    [(jobs,)] = _journal(journal, "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")
    [(pending,)] = _journal(journal, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
    return jobs == 0 and pending == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isolation", choices=("thread", "process"), default="process",
                    help="worker lanes in the service process, or worker processes (default: process)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent storescu clients (default 8)")
    ap.add_argument("--instances", type=int, default=200, help="instances per client (default 200)")
    ap.add_argument("--size", type=int, default=256, help="matrix size (default 256)")
    ap.add_argument("--unloaded", type=int, default=20, help="LGE slices sent before the load (default 20)")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between LGE slices (default 0.25)")
    ap.add_argument("--model", choices=("auto", "lge_qa", "brightness"), default="auto",
                    help="streaming model: lge_qa with the demo weights when present (auto), or the test model")
    ap.add_argument("--backend", choices=("bundled", "inprocess"), default="bundled",
                    help="lge_qa's backend: conf/models.yaml's (onnxruntime, default) or in-process torch")
    ap.add_argument("--load-route", choices=("series", "none"), default="series",
                    help="analyse the load series (series SR, default) or leave them unrouted (ingest only)")
    args = ap.parse_args()
    model = args.model
    if model == "auto":
        model = "lge_qa" if DEMO_WEIGHTS.exists() else "brightness"
    if model == "lge_qa" and not DEMO_WEIGHTS.exists():
        raise SystemExit(f"no demo weights at {DEMO_WEIGHTS}")

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-load-", dir="/tmp") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        logs.mkdir()
        print(f"writing {args.clients} x {args.instances} load instances ({args.size}x{args.size}) ...", flush=True)
        load_files = [
            write_slices(work / f"load-{c}", args.instances, size=args.size, seed=6100 + c,
                         description=LOAD_DESC, images_in_acquisition=args.instances)
            for c in range(args.clients)
        ]
        pacs, pacs_port = start_storescp(work / "pacs", logs, ae_title="PACS")
        sidecar = None
        try:
            port, web_port = free_port(), free_port()
            routes: list[dict[str, Any]] = [
                {"name": "bench-lge", "model": model, "mode": "instance",
                 "match": {"modality": ["MR"], "series_description_regex": f"^{LGE_DESC}$"},
                 "outputs": ["sr", "alert"], "destinations": ["pacs"], "quiet_s": 60},
            ]
            if args.load_route == "series":
                routes.append({"name": "bench-load", "model": "brightness", "mode": "series",
                               "match": {"modality": ["MR"], "series_description_regex": f"^{LOAD_DESC}$"},
                               "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 60})
            models: dict[str, Any] = {"brightness": {}}
            if model == "lge_qa":
                models["lge_qa"] = {"weights": str(DEMO_WEIGHTS), "options": {"threshold": 1e-6},
                                    "backend": _lge_backend(args.backend)}
            cfg = write_config(
                work / "conf", port=port, routes=routes, models=models,
                destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs_port,
                               "ae_title": "PACS"}],
                sender={"echo_on_start": False}, worker={"torch_threads": 2, "isolation": args.isolation},
                web={"enabled": True, "port": web_port},
            )
            journal = cfg / "var" / "journal.sqlite"
            sidecar = start_python("tests.helpers.serve_with_test_models", [str(cfg)], logs, "sidecar")
            wait_echo(sidecar, port, "SIDECAR", timeout_s=240.0)  # worker processes load their models first
            wait_idle(sidecar.pid)
            rss = RssSampler(sidecar.pid)
            rss.start()
            watch = StreamWatch(f"http://127.0.0.1:{web_port}/api/events")
            watch.start()
            stream = LgeStream(port, args.size, args.interval, psir=model == "lge_qa")

            print(f"phase 1, unloaded: {args.unloaded} LGE slices, one every {args.interval} s "
                  f"(model {model}, backend {args.backend})", flush=True)
            stream.run("unloaded", n=args.unloaded)
            _wait_alerts(watch, stream, "unloaded")

            print(f"phase 2, loaded: {args.clients} storescu x {args.instances} instances "
                  f"(load route: {args.load_route}) + the LGE stream", flush=True)
            load_done = threading.Event()
            streamer = threading.Thread(target=stream.run, args=("loaded",), kwargs={"until": load_done})
            t0 = time.time()
            procs = [_storescu(files, port, f"LOAD{c}", logs / f"storescu-{c}.log")
                     for c, files in enumerate(load_files)]
            streamer.start()
            codes = [p.wait() for p in procs]
            t_load = time.time() - t0
            load_done.set()
            streamer.join()
            stream.close()
            _wait_alerts(watch, stream, "loaded")
            deadline = time.monotonic() + 300
            while not _settled(journal) and time.monotonic() < deadline:
                time.sleep(0.5)
            settle_s = time.time() - t0 - t_load
            peak = rss.peak()
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10).read().decode()
            watch.stop()

            # -- zero lost ------------------------------------------------------------------
            n_load = args.clients * args.instances
            paths = [Path(p) for (p,) in _journal(journal, "SELECT path FROM instances")]
            missing_files = sum(1 for p in paths if not p.exists())
            per_client = [
                _journal(journal, "SELECT COUNT(*) FROM instances i JOIN series s ON s.series_uid = i.series_uid"
                         " WHERE s.series_uid = ?", (fake_uid("bench-series", 6100 + c, args.size),))[0][0]
                for c in range(args.clients)
            ]
            outbox = dict(_journal(journal, "SELECT state, COUNT(*) FROM outbox GROUP BY state"))
            failed_jobs = _journal(journal, "SELECT COUNT(*) FROM jobs WHERE state = 'failed'")[0][0]
            lge_ok = sum(1 for s in stream.sent if s.status == 0)
            lge_alerted = sum(1 for s in stream.sent if s.sop_uid in watch.alerts)
            lge_not_assessed = sum(1 for s in stream.sent if s.sop_uid in watch.not_assessed)
            pacs_files = sum(1 for p in (work / "pacs").iterdir() if p.is_file())

            def latencies(phase: str, kind: str) -> list[float]:
                out = []
                for s in stream.sent:
                    a = watch.alerts.get(s.sop_uid)
                    if s.phase != phase or a is None:
                        continue
                    if kind == "ack":
                        out.append(a.arrived_at - s.acked_at)
                    elif a.received_at is not None:
                        out.append(a.raised_at - a.received_at)
                return out

            rate = n_load / t_load
            lost = (n_load - sum(per_client)) + missing_files + (len(stream.sent) - lge_ok)
            print()
            print(f"Load: {args.clients} concurrent dcmtk storescu x {args.instances} MR instances "
                  f"({args.size}x{args.size}) + LGE-like stream ({model}, 1 slice / {args.interval} s)")
            print(f"  {'ingest under load':<34} {rate:7.1f} instances/s  ({n_load} in {t_load:.1f} s; "
                  f"results settled {settle_s:.1f} s later)")
            print(f"  {'time to alert, ack -> stream':<34}")
            print(f"    {'unloaded':<32} {_stats(latencies('unloaded', 'ack'))}")
            print(f"    {'under load':<32} {_stats(latencies('loaded', 'ack'))}")
            print(f"  {'time to alert, receipt -> publish':<34}")
            print(f"    {'unloaded':<32} {_stats(latencies('unloaded', 'server'))}")
            print(f"    {'under load':<32} {_stats(latencies('loaded', 'server'))}")
            print(f"  {'peak RSS of the sidecar':<34} {peak / 1024**2:7.0f} MiB  (target < 1536 MiB: "
                  f"{'MET' if peak < RSS_TARGET_BYTES else 'NOT MET'})")
            print(f"  {'storescu exit codes':<34} {codes}")
            print(f"  {'load instances in the journal':<34} {sum(per_client)} of {n_load} {per_client}")
            print(f"  {'spool files missing':<34} {missing_files} of {len(paths)} journalled")
            print(f"  {'LGE slices acked / alerted':<34} {lge_ok} / {lge_alerted} of {len(stream.sent)}, "
                  f"{lge_not_assessed} not assessed (domain guard: no alert due) "
                  f"({watch.slices} slice results on the stream)")
            if stream.lost:
                print(f"  {'LGE stream':<34} {stream.lost}")
            print(f"  {'outbox':<34} {outbox}  failed jobs: {failed_jobs}  files at the PACS: {pacs_files}")
            zero = (lost == 0 and all(c == 0 for c in codes) and outbox.get("pending", 0) == 0
                    and outbox.get("dead", 0) == 0 and failed_jobs == 0 and lge_alerted + lge_not_assessed == len(stream.sent))
            print(f"  {'zero lost':<34} {'YES' if zero else 'NO'}")
            _print_settle(journal)
            for phase in ("unloaded", "loaded"):
                _print_alert_stages(journal, watch, [x for x in stream.sent if x.phase == phase], phase)
            print("\n/metrics after the run (selected):")
            for line in metrics.splitlines():
                if line.startswith(("sidecar_instances_", "sidecar_series{", "sidecar_dead_letters",
                                    "sidecar_outbox_", "sidecar_time_to_alert_seconds_count",
                                    "sidecar_time_to_alert_seconds_sum", "sidecar_inference_seconds_count",
                                    "sidecar_process_resident_memory_bytes")) and "_created" not in line:
                    print("  " + line)
        finally:
            if sidecar is not None:
                sidecar.stop()
            pacs.stop()
    print(f"\nmachine: {machine_note()}; total {time.monotonic() - t_start:.0f} s")
    return 0


def _lge_backend(which: str) -> Any:
    """lge_qa's `backend:` entry as conf/models.yaml ships it (its paths made absolute), or in process."""
    if which == "inprocess":
        return "inprocess"
    import yaml

    entry = yaml.safe_load((REPO / "conf" / "models.yaml").read_text(encoding="utf-8"))["models"]["lge_qa"]
    backend = dict(entry.get("backend") or {"kind": "inprocess"})
    if backend.get("model_file"):
        backend["model_file"] = str((REPO / "conf" / backend["model_file"]).resolve())
    return backend


def _print_settle(journal: Path) -> None:
    """Where the settle time went: per stage of the series jobs, seconds after the last load instance."""
    rows = _journal(journal, """
        SELECT s.last_received, s.completed_at, j.created_at, j.started_at, j.finished_at,
               (SELECT MAX(o.sent_at) FROM outbox o WHERE o.job_id = j.id)
        FROM jobs j JOIN series s ON s.series_uid = j.series_uid
        WHERE j.route = 'bench-load' ORDER BY j.id""")
    if not rows:
        return
    last = max(r[0] for r in rows)
    names = ("series complete", "job queued", "job started", "job finished", "SR at the PACS")

    def span(i: int) -> str:
        vals = [r[i] - last for r in rows if r[i] is not None]
        return f"+{min(vals):6.1f} .. +{max(vals):6.1f} s" if vals else "never"

    runs = [r[4] - r[3] for r in rows if r[3] is not None and r[4] is not None]
    print(f"  {'settle, load series jobs':<34} (n={len(rows)}; seconds after the last load instance was received)")
    for i, name in enumerate(names, start=1):
        print(f"    {name:<32} {span(i)}")
    if runs:
        print(f"    {'one job, started -> finished':<32} median {median(runs):.1f} s, max {max(runs):.1f} s")


def _print_alert_stages(journal: Path, watch: StreamWatch, sent: list[Slice], phase: str) -> None:
    """Where an LGE slice's time to alert goes, from the journal's timestamps and the alert's raised_at."""
    stages: dict[str, list[float]] = {"received -> job queued (assembler, routing)": [],
                                      "job queued -> claimed (streaming worker)": [],
                                      "claimed -> alert raised (read, model, alert)": [],
                                      "raised -> on the stream (fan-out, web)": []}
    keys = list(stages)
    for x in sent:
        alert = watch.alerts.get(x.sop_uid)
        rows = _journal(journal, "SELECT i.received_at, j.created_at, j.started_at FROM instances i "
                        "JOIN jobs j ON j.instance_uid = i.sop_instance_uid WHERE i.sop_instance_uid = ?",
                        (x.sop_uid,))
        if alert is None or not rows or None in rows[0]:
            continue
        received, queued, started = rows[0]
        for key, value in zip(keys, (queued - received, started - queued, alert.raised_at - started,
                                     alert.arrived_at - alert.raised_at), strict=True):
            stages[key].append(value)
    if not stages[keys[0]]:
        return
    print(f"  {'alert stages, ' + phase:<34} (journal timestamps; n={len(stages[keys[0]])})")
    for key, values in stages.items():
        print(f"    {key:<48} {_stats(values)}")


def _wait_alerts(watch: StreamWatch, stream: LgeStream, phase: str) -> None:
    deadline = time.monotonic() + ALERT_TIMEOUT_S
    want = [s.sop_uid for s in stream.sent if s.phase == phase and s.status == 0]
    while time.monotonic() < deadline and any(u not in watch.alerts and u not in watch.not_assessed for u in want):
        time.sleep(0.05)


if __name__ == "__main__":
    raise SystemExit(main())
