"""Scale-out benchmark (issue 9). Two parts, each self-contained, selected by `--part`:

- `journal`: one vs two sidecar workers on a shared PostgreSQL journal (series per minute,
  scaling ratio). Below, "Journal part".
- `backends`: time-to-alert p95 with the `inprocess`, `onnxruntime` and `triton` backends side by
  side. Below, "Inference backends part" (written separately; this file leaves its place).

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

Needs PostgreSQL server binaries (Debian `postgresql`) and psycopg (`pip install .[postgres]`);
without them the journal part says why and is skipped.
"""

from __future__ import annotations

import argparse
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
# (the backends engineer's section: replace `backends_part` below; keep `--part backends` working)
# ================================================================================================


def backends_part(args: argparse.Namespace) -> None:
    print("backends part: not in this file yet")


# ================================================================================================


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
    args = p.parse_args(argv)
    if args.part in ("journal", "all"):
        journal_part(args)
    if args.part in ("backends", "all"):
        backends_part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
