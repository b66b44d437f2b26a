"""Time to result: series-to-SR when the count is known, and per-slice streaming (instance mode).

The real service runs in a subprocess with the BrightnessModel test model and production
poll intervals (worker 0.2 s, sender 0.5 s; both are also woken at once when work is queued);
a dcmtk storescp plays the PACS. Arrival at the PACS is the mtime of the file storescp wrote
(ext4 stamps it with the kernel's coarse clock, a few ms resolution).

- Series mode: N series of M slices with ImagesInAcquisition = M, each sent by dcmtk storescu
  over its own association (as a console does). Latency = SR file at the PACS minus the moment
  storescu exited (every instance acknowledged, association released).
- Instance mode (streaming, LGE-style): slices sent one by one over ONE pynetdicom association;
  latency = the slice's SR (and its QA alert image) at the PACS minus the moment the C-STORE
  response for that slice came back. The next slice goes once the previous one's results are in.

The journal's job and outbox timestamps split each latency into: queue wait (job created ->
worker claimed it), run (read instances, model, build and write the SR), delivery (job done ->
PACS acknowledged the result).

    python -m bench.latency [--series 20] [--slices 16] [--size 256] [--stream 50]

Target (issue 2): < 1 s.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from bench.common import (
    machine_note,
    median,
    percentile,
    start_python,
    start_storescp,
    storescu,
    wait_echo,
    wait_idle,
    write_slices,
)
from tests.helpers.dicom_factory import fake_uid, make_mr
from tests.helpers.ports import free_port
from tests.helpers.sidecar import write_config

SERIES_DESC = "BENCH SERIES"
STREAM_DESC = "BENCH STREAM"
TARGET_S = 1.0
#: issue 15: the streaming alert must reach the console within 150 ms of the slice's C-STORE response
ALERT_TARGET_S = 0.150


@dataclass
class Arrival:
    path: Path
    modality: str
    mtime: float


class Pacs:
    """Watches the storescp folder for new files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()

    def new_files(self) -> list[Arrival]:
        out = []
        for p in sorted(self.folder.iterdir()):
            if p.name in self.seen or not p.is_file() or p.name.startswith("."):
                continue
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:  # still being written: try again next poll
                continue
            self.seen.add(p.name)
            out.append(Arrival(p, str(ds.get("Modality", "")), p.stat().st_mtime))
        return out

    def wait_for(self, want_sr: int, timeout_s: float, linger_s: float = 0.0) -> list[Arrival]:
        """Poll until `want_sr` SR files arrived (then `linger_s` more for alert images)."""
        got: list[Arrival] = []
        deadline = time.monotonic() + timeout_s
        sr_done_at: float | None = None
        while time.monotonic() < deadline:
            got.extend(self.new_files())
            if sr_done_at is None and sum(a.modality == "SR" for a in got) >= want_sr:
                sr_done_at = time.monotonic()
            if sr_done_at is not None and (time.monotonic() - sr_done_at >= linger_s or
                                           any(a.modality != "SR" for a in got) or linger_s == 0):
                return got
            time.sleep(0.005)
        raise TimeoutError(f"{len(got)} results arrived in {timeout_s} s, wanted {want_sr} SR")


def _stats(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:<34} (none)"
    return (f"{label:<34} n={len(values):<3} p50 {median(values) * 1000:7.1f} ms   "
            f"p95 {percentile(values, 95) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms")


def _breakdown(journal: Path, kind: str) -> list[str]:
    """Queue wait, run and delivery per job, from the journal's timestamps."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        where = "j.instance_uid != ''" if kind == "instance" else "j.instance_uid = ''"
        rows = db.execute(
            "SELECT j.created_at, j.started_at, j.finished_at, MAX(o.sent_at) FROM jobs j"
            f" JOIN outbox o ON o.job_id = j.id WHERE j.state = 'done' AND {where} GROUP BY j.id"
        ).fetchall()
    finally:
        db.close()
    rows = [r for r in rows if None not in r]
    return [
        _stats("  queue wait (queued -> claimed)", [r[1] - r[0] for r in rows]),
        _stats("  run (read, model, SR build+write)", [r[2] - r[1] for r in rows]),
        _stats("  delivery (done -> PACS acked)", [r[3] - r[2] for r in rows]),
    ]


def series_mode(work: Path, port: int, pacs: Pacs, n_series: int, n_slices: int, size: int) -> list[float]:
    datasets = [
        write_slices(work / f"series-{i}", n_slices, size=size, seed=5000 + i, description=SERIES_DESC,
                     images_in_acquisition=n_slices)
        for i in range(n_series)
    ]
    latencies = []
    for i, files in enumerate(datasets):
        storescu(files, port, "SIDECAR")
        t_exit = time.time()
        got = pacs.wait_for(1, timeout_s=60)
        sr = [a for a in got if a.modality == "SR"]
        latencies.append(min(a.mtime for a in sr) - t_exit)
        print(f"  series {i + 1:>2}: SR at the PACS {latencies[-1] * 1000:7.1f} ms after storescu exited",
              flush=True)
        time.sleep(0.2)
    return latencies


def stream_mode(port: int, pacs: Pacs, n: int, size: int, per_series: int = 10) -> tuple[list[float], list[float]]:
    slices = []
    for k in range(n):
        s, i = divmod(k, per_series)
        ds = make_mr(seed=7000 + s, study_uid=fake_uid("bench-stream-study"),
                     series_uid=fake_uid("bench-stream", s), instance_number=i + 1, size=size)
        ds.SeriesDescription = STREAM_DESC
        slices.append(ds)
    ae = AE(ae_title="BENCHSTREAM")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR")
    if not assoc.is_established:
        raise RuntimeError("association with the sidecar was not established")
    sr_lat: list[float] = []
    alert_lat: list[float] = []
    try:
        for k, ds in enumerate(slices):
            status = assoc.send_c_store(ds)
            t_ack = time.time()
            if int(status.Status) != 0:
                raise RuntimeError(f"C-STORE of slice {k} answered 0x{int(status.Status):04x}")
            got = pacs.wait_for(1, timeout_s=60, linger_s=0.5)
            sr_lat.extend(a.mtime - t_ack for a in got if a.modality == "SR")
            alert_lat.extend(a.mtime - t_ack for a in got if a.modality != "SR")
            time.sleep(0.05)
    finally:
        assoc.release()
    return sr_lat, alert_lat


def job_cost_by_series_size(size: int, counts: tuple[int, ...] = (1, 4, 16, 32), repeats: int = 3) -> None:
    """The worker's steps for one job, in this process, by number of images (median of `repeats`).

    The same calls the worker makes (sidecar.pipeline.worker.Worker._execute), minus the
    journal: read the spooled files, prepare + predict, build the SR (highdicom), encode it.
    """
    import io

    from sidecar.results import build_results
    from tests.helpers.models import BrightnessModel

    model = BrightnessModel()
    blobs = []
    for i in range(1, max(counts) + 1):
        buf = io.BytesIO()
        make_mr(seed=9000, instance_number=i, size=size).save_as(buf, enforce_file_format=True)
        blobs.append(buf.getvalue())
    print(f"\nworker job cost in-process by series size ({size}x{size}, median of {repeats}, ms):")
    print(f"  {'images':>6} | {'read':>6} | {'model':>6} | {'SR build':>8} | {'SR encode':>9} | {'total':>6}")
    for n in counts:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            datasets = [pydicom.dcmread(io.BytesIO(b)) for b in blobs[:n]]
            t1 = time.perf_counter()
            findings = model.predict(model.prepare(datasets))
            t2 = time.perf_counter()
            objects = build_results(findings, datasets, model.card, ["sr"], input_uid=fake_uid("job", n),
                                    kind="instance" if n == 1 else "series", revision=0)
            t3 = time.perf_counter()
            for ds in objects:
                ds.save_as(io.BytesIO(), enforce_file_format=True)
            t4 = time.perf_counter()
            samples.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
        cols = [median([s[k] for s in samples]) * 1000 for k in range(5)]
        print(f"  {n:>6} | {cols[0]:6.1f} | {cols[1]:6.1f} | {cols[2]:8.1f} | {cols[3]:9.1f} | {cols[4]:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isolation", choices=("thread", "process"), default="process",
                    help="worker lanes in the service process, or worker processes (default: process)")
    ap.add_argument("--series", type=int, default=20, help="series for series mode (default 20)")
    ap.add_argument("--slices", type=int, default=16, help="slices per series (default 16)")
    ap.add_argument("--size", type=int, default=256, help="matrix size (default 256)")
    ap.add_argument("--stream", type=int, default=50, help="slices for instance mode (default 50)")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip the in-process cost of one job by series size")
    args = ap.parse_args()

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-latency-", dir="/tmp") as tmp:
        work = Path(tmp)
        pacs_proc, pacs_port = start_storescp(work / "pacs", work, ae_title="PACS")
        sidecar = None
        try:
            port = free_port()
            routes = [
                {"name": "bench-series", "model": "brightness", "mode": "series",
                 "match": {"modality": ["MR"], "series_description_regex": f"^{SERIES_DESC}$"},
                 "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 60},
                {"name": "bench-stream", "model": "brightness", "mode": "instance",
                 "match": {"modality": ["MR"], "series_description_regex": f"^{STREAM_DESC}$"},
                 "outputs": ["sr", "alert"], "destinations": ["pacs"], "quiet_s": 60},
            ]
            cfg = write_config(
                work / "conf", port=port, routes=routes, models={"brightness": {}},
                destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs_port,
                               "ae_title": "PACS"}],
                alert_channels=[{"kind": "dicom", "destination": "pacs"}],
                sender={"echo_on_start": False}, worker={"torch_threads": 1, "isolation": args.isolation},
            )
            sidecar = start_python("tests.helpers.serve_with_test_models", [str(cfg)], work, "sidecar")
            wait_echo(sidecar, port, "SIDECAR", timeout_s=240.0)  # worker processes load their models first
            wait_idle(sidecar.pid)
            pacs = Pacs(work / "pacs")

            print(f"series mode: {args.series} series x {args.slices} slices {args.size}x{args.size}, "
                  "ImagesInAcquisition set, storescu per series")
            series_lat = series_mode(work, port, pacs, args.series, args.slices, args.size)
            print(f"instance mode: {args.stream} slices {args.size}x{args.size}, one pynetdicom association")
            sr_lat, alert_lat = stream_mode(port, pacs, args.stream, args.size)
            journal = cfg / "var" / "journal.sqlite"

            print("\nTime to result (targets: SRs < 1 s, the streaming alert < 150 ms)")
            print(_stats("series: SR after storescu exit", series_lat))
            print("\n".join(_breakdown(journal, "series")))
            print(_stats("instance: SR after C-STORE rsp", sr_lat))
            print(_stats("instance: alert after C-STORE rsp", alert_lat))
            print("\n".join(_breakdown(journal, "instance")))
            for label, values, target in (("series SR", series_lat, TARGET_S), ("instance SR", sr_lat, TARGET_S),
                                          ("instance alert", alert_lat, ALERT_TARGET_S)):
                if values:
                    p95 = percentile(values, 95)
                    print(f"target p95 < {target * 1000:.0f} ms, {label}: {'MET' if p95 < target else 'NOT MET'} "
                          f"({p95 * 1000:.0f} ms)")
        finally:
            if sidecar is not None:
                sidecar.stop()
            pacs_proc.stop()
    if not args.no_breakdown:
        job_cost_by_series_size(args.size)
    print(f"\nmachine: {machine_note()}; total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
