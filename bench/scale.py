"""Scale-out benchmark (issue 9). Two parts, each self-contained, selected by `--part`:

- `journal`: one vs two sidecar workers on a shared PostgreSQL journal (series per minute,
  scaling ratio). Below, "Journal part".
- `backends`: time-to-alert p95 with the `inprocess`, `onnxruntime` and `triton` backends side by
  side. Below, "Inference backends part".

Journal part. A throwaway PostgreSQL 15 cluster (durable: fsync on, as a site runs it) is started
in a temporary folder on 127.0.0.1 (tests/helpers/postgres.py; as root it runs as the `postgres`
user) and stopped by PID. For each configuration (1 node, then 2 nodes) a fresh database, a fresh
shared data folder (spool + results, as on an NFS mount) and a dcmtk storescp PACS; the nodes are
real sidecar subprocesses (`python -m bench.scale serve CONFIG`: the test models plus `slow`, the
brightness model with a fixed `--model-ms` sleep per forward pass, standing in for inference on a
GPU or a remote server, so the two CPU cores here are not what is measured). `--clients` dcmtk
storescu processes, started together, send `--series` series of `--instances` slices each (series
complete on ImagesInAcquisition), spread round-robin over the nodes' ports. Measured: from the
first client start until the last SR is at the PACS; series/min = series / that time * 60; the
scaling ratio = two-node rate / one-node rate (2.0 would be perfect). Rounds alternate 1, 2, 1, 2...
and the median of each is reported.

    python -m bench.scale [--part journal|backends|all] [--series 24] [--instances 4]
                          [--model-ms 500] [--clients 4] [--rounds 2]
                          [--stream 40] [--interval-ms 100] [--deadline-ms 500] [--forward-n 200] [--threads 1]

Needs PostgreSQL server binaries (Debian `postgresql`) and psycopg (`pip install .[postgres]`);
without them the journal part says why and is skipped. The backends part needs `.[onnx]`,
`.[triton]` and a Python that loads nvidia-pytriton (docs/scale-out.md); a backend that cannot run
is left out of its table with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Child, machine_note, start_python, start_storescp, storescu, wait_echo, write_slices
from tests.helpers.ports import free_port
from tests.helpers.sidecar import write_config

# ================================================================================================
# Journal part: one vs two sidecar workers on a shared PostgreSQL journal
# ================================================================================================


def serve(argv: Sequence[str]) -> int:
    """`python -m bench.scale serve CONFIG`: the sidecar with the test models and `slow`."""
    from tests.helpers import models, serve_with_test_models

    class SlowModel(models.BrightnessModel):
        def __init__(self, delay_s: float) -> None:
            super().__init__()
            self.delay_s = delay_s

        def predict(self, batch: Any) -> Any:
            time.sleep(self.delay_s)
            return super().predict(batch)

    def build_slow(weights: Path | None = None, options: dict[str, Any] | None = None) -> SlowModel:
        return SlowModel(float((options or {}).get("delay_s", 0.2)))

    models.FACTORIES["slow"] = build_slow
    return serve_with_test_models.main(list(argv))


def _count(url: str, sql: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def _stage_medians(url: str) -> dict[str, float]:
    """Median seconds per series from completion to inference done, and from there to sent."""
    import psycopg

    sql = ("SELECT series_uid, kind, MIN(at) FROM events WHERE kind IN ('complete', 'inferred', 'sent')"
           " GROUP BY series_uid, kind")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(sql).fetchall()
    at: dict[str, dict[str, float]] = {}
    for uid, kind, t in rows:
        at.setdefault(uid, {})[kind] = float(t)
    full = [v for v in at.values() if len(v) == 3]
    return {"complete_to_inferred_s": statistics.median(v["inferred"] - v["complete"] for v in full),
            "inferred_to_sent_s": statistics.median(v["sent"] - v["inferred"] for v in full)}


def run_journal_round(cluster: Any, work: Path, n_nodes: int, series: list[list[Path]],
                      args: argparse.Namespace, tag: str) -> dict[str, float]:
    """One configuration: `n_nodes` sidecars on a fresh database; returns its measurements."""
    url = cluster.fresh_url(f"bench{n_nodes}")
    from sidecar.journal import Journal

    Journal(url).close()  # the schema, before the nodes start
    logs = work / f"logs-{tag}"
    logs.mkdir(parents=True)
    pacs_dir = work / f"pacs-{tag}"
    pacs, pacs_port = start_storescp(pacs_dir, logs, "PACS")
    nodes: list[Child] = []
    ports: list[int] = []
    try:
        routes = [{"name": "slow-mr", "model": "slow", "mode": "series", "match": {"modality": ["MR"]},
                   "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 5.0}]
        dest = [{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}]
        for i in range(n_nodes):
            port = free_port()
            cfg = write_config(work / f"conf-{tag}-{i}", routes=routes, destinations=dest, port=port,
                               models={"slow": {"options": {"delay_s": args.model_ms / 1000}}},
                               data_dir=str(work / f"shared-{tag}"), journal_url=url, node_name=f"node{i}",
                               log_level="warning", worker={"poll_s": 0.2, "torch_threads": 1},
                               sender={"poll_s": 0.2, "echo_on_start": False})
            nodes.append(start_python("bench.scale", ["serve", str(cfg)], logs, f"sidecar-{i}"))
            ports.append(port)
        for node, port in zip(nodes, ports, strict=True):
            wait_echo(node, port, "SIDECAR")

        per_client: list[list[Path]] = [[] for _ in range(args.clients)]
        for k, files in enumerate(series):
            per_client[k % args.clients].extend(files)
        errors: list[str] = []

        def client(i: int) -> None:
            try:
                storescu(per_client[i], ports[i % n_nodes], "SIDECAR")
            except RuntimeError as exc:
                errors.append(str(exc))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent_s = time.perf_counter() - t0
        if errors:
            raise RuntimeError(errors[0])
        deadline = time.monotonic() + 600
        while len([p for p in pacs_dir.iterdir() if p.is_file()]) < len(series):
            if time.monotonic() > deadline:
                raise RuntimeError("results did not all arrive within 600 s")
            time.sleep(0.02)
        done_s = time.perf_counter() - t0
        waits = _stage_medians(url)
        return {"nodes": n_nodes, "elapsed_s": done_s, "ingest_s": sent_s,
                "series_per_min": len(series) / done_s * 60.0, **waits}
    finally:
        for node in nodes:
            node.stop()
        pacs.stop()


def journal_part(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers.postgres import PostgresCluster, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        print(f"journal part skipped: {reason}")
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        series = [write_slices(work / "in" / str(k), args.instances, size=args.size, seed=7000 + k,
                               images_in_acquisition=args.instances) for k in range(args.series)]
        cluster = PostgresCluster(durable=True).start()
        try:
            results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            for r in range(args.rounds):
                for n in (1, 2):
                    res = run_journal_round(cluster, work, n, series, args, f"r{r}n{n}")
                    results[n].append(res)
                    print(f"  round {r + 1}, {n} node(s): {res['series_per_min']:.0f} series/min"
                          f" ({res['elapsed_s']:.1f} s, clients done after {res['ingest_s']:.1f} s; median per series:"
                          f" complete->inferred {res['complete_to_inferred_s']:.2f} s,"
                          f" inferred->sent {res['inferred_to_sent_s']:.2f} s)", flush=True)
        finally:
            cluster.stop()
    one = statistics.median(x["series_per_min"] for x in results[1])
    two = statistics.median(x["series_per_min"] for x in results[2])
    print()
    print(f"Journal: {args.series} series x {args.instances} slices ({args.size}²), model {args.model_ms:.0f} ms"
          f" per series, {args.clients} storescu clients, PostgreSQL 15 on 127.0.0.1 (fsync on)")
    print("| sidecar workers | series/min (median) | scaling |")
    print("|---|---|---|")
    print(f"| 1 | {one:.0f} | 1.00 |")
    print(f"| 2 | {two:.0f} | {two / one:.2f} |")
    print(machine_note())


# ================================================================================================
# Inference backends part: time-to-alert p95, inprocess vs onnxruntime vs triton
# ================================================================================================
#
# The LGE model (bundled demo weights) behind each backend, in this process, with the real journal
# (SQLite), the real worker and its alert fan-out. Slices of phantom PSIR stacks are "received" one
# by one every --interval-ms (recorded in the journal, a streaming job queued, the worker woken: what
# the listener does), and the route's threshold is set to 0.001 so every slice raises an alert (the
# worst case: every slice pays the alert path). time-to-alert = Alert.raised_at - received_at, the
# service's own time_to_alert metric: queue wait, reading the DICOM file, preprocessing, the forward
# on the backend and the alert. Beside it, the forward alone: --forward-n single-slice calls to
# each backend (p50/p95 per slice). Backends are interleaved within each round (inprocess,
# onnxruntime, triton; then the next round), so load that hits a round hits each of them.
#
# Every backend computes on --threads threads (default 1: on two cores shared with other work, a
# two-thread forward waits for its slower thread). onnxruntime: the ONNX export of the same weights
# (`python -m train lge_qa export`), CPU provider. triton: a real `tritonserver` from
# nvidia-pytriton on 127.0.0.1 serving that ONNX file through its Python callback path (the slowest
# way to run Triton; NVIDIA's image runs the exported repository on its onnxruntime/TensorRT
# backends instead), reached over gRPC asyncio with the sidecar's deadline and priority 1. It runs
# on the same two CPU cores as the client. A backend whose optional install or server is missing is
# reported with the reason and left out.


def _backends_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backends part")
    g.add_argument("--stream", type=int, default=40, help="slices streamed per backend per round")
    g.add_argument("--interval-ms", type=float, default=100.0, help="time between slice arrivals")
    g.add_argument("--deadline-ms", type=float, default=500.0, help="Triton deadline per forward")
    g.add_argument("--forward-n", type=int, default=200, help="single-slice forward calls per backend")
    g.add_argument("--threads", type=int, default=1,
                   help="compute threads of each backend (torch, onnxruntime, the Triton model's onnxruntime)")


def _open_backend_models(work: Path, deadline_ms: float, threads: int,
                         stack: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """{backend: LgeQaModel} for each backend that can run here, and {backend: why not} for the rest."""
    from models.backends import BackendUnavailable, OnnxRuntimeConfig, TritonConfig
    from models.checkpoint import ModelUnavailable
    from models.lge_qa.wrapper import build
    from models.registry import ModelSpec, build_model

    weights = Path(__file__).resolve().parents[1] / "models" / "lge_qa" / "weights" / "demo.pt"
    options = {"threshold": 0.001, "torch_threads": threads}
    models: dict[str, Any] = {"inprocess": build(weights, options)}
    why: dict[str, str] = {}
    try:
        from models.backends.export import export_onnx

        onnx_file = export_onnx(models["inprocess"].net, models["inprocess"].tensor_signature(), work / "lge_qa.onnx")
        models["onnxruntime"] = build_model(ModelSpec("lge_qa", weights, None, options,
                                                      OnnxRuntimeConfig(model_file=onnx_file, threads=threads)))
    except (BackendUnavailable, ModelUnavailable) as exc:
        why["onnxruntime"] = str(exc)
        return models, {**why, "triton": "needs the ONNX export: " + str(exc)}
    from models.backends.pytriton_serve import PytritonServer, triton_python
    from models.lge_qa.wrapper import LgeQaModel

    python, reason = triton_python()
    try:
        importlib.import_module("tritonclient.grpc.aio")  # the client the backend uses
    except ImportError:
        reason = "tritonclient[grpc] is not installed (pip install '.[triton]')"
    if python is None or reason:
        why["triton"] = reason
        return models, why
    server = stack.enter_context(PytritonServer(python, onnx_file, threads=threads, log_file=work / "triton.log"))
    model = build_model(ModelSpec("lge_qa", weights, None, options,
                                  TritonConfig(endpoints=(server.endpoint,), deadline_ms=deadline_ms, priority=1)))
    assert isinstance(model, LgeQaModel)
    stack.callback(model.backend.close)
    models["triton"] = model
    return models, why


def _forward_times(model: Any, x: Any, n: int) -> tuple[list[float], int]:
    """(seconds per answered single-slice forward, failed forwards), after 10 warm-up calls."""
    from models.backends import InferenceFailed

    out, failed = [], 0
    for i in range(n + 10):
        t0 = time.perf_counter()
        try:
            model.backend.run(x)
        except InferenceFailed:  # counted: a forward past its deadline is a result here
            failed += i >= 10
            continue
        if i >= 10:
            out.append(time.perf_counter() - t0)
    return out, failed


def _time_to_alert(model: Any, files: list[tuple[Any, Path]], work: Path, interval_s: float) -> tuple[list[float], int]:
    """Stream `files` into a fresh journal and worker; (time-to-alert seconds per slice, failed jobs)."""
    from sidecar.alerts.fanout import Alert, AlertFanout
    from sidecar.journal import InstanceRecord, Journal
    from sidecar.pipeline.worker import Worker
    from sidecar.routing.rules import Route

    alerts: list[Alert] = []
    lock = threading.Lock()

    class Collect:
        def send(self, alert: Alert) -> None:
            with lock:
                alerts.append(alert)

    journal = Journal(f"sqlite:///{work / 'journal.sqlite'}")
    route = Route.model_validate({"name": "lge", "model": "lge_qa", "mode": "instance", "outputs": ["sr", "alert"],
                                  "destinations": ["pacs"]})
    worker = Worker(journal, {"lge_qa": model}, [route], work / "results", fanout=AlertFanout([Collect()]),
                    poll_s=0.2, max_batch=16)
    worker.start()
    try:
        for ds, path in files:
            t_next = time.perf_counter() + interval_s
            journal.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                                   str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), "MR",
                                                   str(path), path.stat().st_size))
            journal.enqueue_job(series_uid=str(ds.SeriesInstanceUID), instance_uid=str(ds.SOPInstanceUID),
                                model_id="lge_qa", model_version=model.card.version, revision=0, route="lge",
                                priority=0)
            worker.notify()
            time.sleep(max(0.0, t_next - time.perf_counter()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                n = len(alerts)
            if n + len(journal.failed_jobs()) >= len(files):
                break
            time.sleep(0.02)
    finally:
        worker.stop()
    with lock:
        ttas = [a.raised_at - a.received_at for a in alerts
                if a.received_at is not None and a.label != "ai_unavailable"]
    return ttas, len(journal.failed_jobs())


def backends_part(args: argparse.Namespace) -> None:
    import contextlib
    import logging

    import numpy as np
    import structlog

    from train.phantoms.lge import demo_series

    # the worker's per-job info lines would drown the table; warnings (endpoint failures) stay
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        models, why = _open_backend_models(work, args.deadline_ms, args.threads, stack)
        for name, reason in why.items():
            print(f"backends part: {name} left out: {reason}")
        datasets = [ds for seed in range(100, 100 + (args.stream + 7) // 8) for ds in demo_series(seed, 8)]
        datasets = datasets[: args.stream]
        (work / "in").mkdir()
        files = []
        for ds in datasets:
            path = work / "in" / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append((ds, path))
        x = models["inprocess"].prepare(datasets[:1]).tensor.numpy()
        forward: dict[str, list[float]] = {n: [] for n in models}
        tta: dict[str, list[float]] = {n: [] for n in models}
        failed: dict[str, int] = dict.fromkeys(models, 0)
        failed_fw: dict[str, int] = dict.fromkeys(models, 0)
        for r in range(args.rounds):
            for name, model in models.items():
                times, n_failed = _forward_times(model, x, args.forward_n)
                forward[name] += times
                failed_fw[name] += n_failed
                times, n_failed = _time_to_alert(model, files, work / f"r{r}-{name}", args.interval_ms / 1000)
                tta[name] += times
                failed[name] += n_failed
                print(f"  round {r + 1}, {name}: forward p50 {np.percentile(forward[name], 50) * 1000:.1f} ms;"
                      f" time-to-alert p95 {np.percentile(times, 95) * 1000 if times else float('nan'):.1f} ms"
                      f" ({len(times)} alerts, {n_failed} jobs failed)", flush=True)

    def ms(values: list[float], q: float) -> str:
        return f"{np.percentile(values, q) * 1000:.1f}" if values else "-"

    print()
    print(f"Backends: LGE demo model (tiny EfficientNetV2, 192² input), {args.stream} slices streamed every"
          f" {args.interval_ms:.0f} ms x {args.rounds} rounds, every slice alerting; forward = one slice,"
          f" {args.forward_n} calls x {args.rounds} rounds; {args.threads} compute thread(s) per backend;"
          f" triton deadline {args.deadline_ms:.0f} ms, priority 1")
    print("| backend | forward p50 ms | forward p95 ms | time-to-alert p50 ms | time-to-alert p95 ms |"
          " failed (forwards / jobs) |")
    print("|---|---|---|---|---|---|")
    for name in ("inprocess", "onnxruntime", "triton"):
        if name in models:
            print(f"| {name} | {ms(forward[name], 50)} | {ms(forward[name], 95)} | {ms(tta[name], 50)} |"
                  f" {ms(tta[name], 95)} | {failed_fw[name]} / {failed[name]} |")
        else:
            print(f"| {name} | - | - | - | - | left out: {why.get(name, '')[:60]} |")
    print(machine_note())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["journal", "backends", "all"], default="all")
    p.add_argument("--series", type=int, default=24, help="series per configuration")
    p.add_argument("--instances", type=int, default=4, help="slices per series")
    p.add_argument("--size", type=int, default=256, help="slice size in pixels")
    p.add_argument("--model-ms", type=float, default=500.0, help="inference time per series job")
    p.add_argument("--clients", type=int, default=4, help="concurrent storescu processes")
    p.add_argument("--rounds", type=int, default=2, help="alternating 1-node / 2-node rounds")
    _backends_options(p)
    args = p.parse_args(argv)
    if args.part in ("journal", "all"):
        journal_part(args)
    if args.part in ("backends", "all"):
        backends_part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
