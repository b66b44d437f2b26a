"""Ingest throughput: the same MR slices sent by dcmtk storescu to four receivers, side by side.

Targets, each started fresh for every run (so the sidecar never sees a duplicate SOP Instance):

- storescp: dcmtk's storescp writing files (the speed a C++ SCP reaches here);
- orthanc:  Orthanc (Debian package) storing into its own storage and SQLite index: what a
            site would otherwise run beside a PACS;
- bare:     a bare pynetdicom SCP writing `event.encoded_dataset()` (no fsync, no journal);
- sidecar:  the real service in a subprocess (durable spool writes with fsync, SQLite journal
            with synchronous=FULL), with its only route matching CT so the MR series is kept
            but unrouted: only ingest is measured.

Runs are interleaved (round 1: storescp, bare, sidecar for each size; round 2: ...), and the
ratios are taken within a round before the median, so machine load hits all targets alike.

    python -m bench.ingest [--n 300] [--sizes 256 512] [--rounds 3] [--profile]

`--profile` adds, after the table, (1) a run with wall-clock timers around each step of the
sidecar's C-STORE handler and (2) a run under cProfile on every thread of the sidecar.
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Child,
    machine_note,
    median,
    start_python,
    start_storescp,
    storescu,
    wait_echo,
    wait_idle,
    write_slices,
)
from tests.helpers.orthanc import Orthanc
from tests.helpers.ports import free_port
from tests.helpers.sidecar import write_config

TARGETS = ("storescp", "orthanc", "bare", "sidecar")
SHM_TARGET = "sidecar-tmpfs"  # diagnostic: same service, spool and journal on tmpfs (fsync is free)
CT_ONLY_ROUTE = [{
    "name": "bench-ct-only", "model": "brightness", "mode": "series", "match": {"modality": ["CT"]},
    "outputs": ["sr"], "destinations": [], "quiet_s": 60,
}]


class OrthancChild:
    """Orthanc behind the `Child` interface one_run uses (stop); its store is counted over REST."""

    def __init__(self) -> None:
        self.orthanc = Orthanc(ae_title="ORTHANC").start()

    def count(self) -> int:
        return len(self.orthanc.instances())

    def stop(self) -> None:
        self.orthanc.stop()


@dataclass
class Run:
    target: str
    size: int
    round: int
    seconds: float
    n: int

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def start_sidecar(work: Path, tag: str, module: str = "tests.helpers.serve_with_test_models",
                  env: dict[str, str] | None = None, data_dir: Path | None = None) -> tuple[Child, int, Path]:
    """The real service on a free port, with a fresh data folder; waits until it is idle."""
    port = free_port()
    extra: dict[str, Any] = {"data_dir": str(data_dir)} if data_dir is not None else {}
    cfg = write_config(work / f"conf-{tag}", routes=CT_ONLY_ROUTE, models={"brightness": {}}, port=port, **extra)
    spool = (data_dir or cfg / "var") / "spool"
    child = start_python(module, [str(cfg)], work, f"sidecar-{tag}", env=env)
    wait_echo(child, port, "SIDECAR")
    wait_idle(child.pid)  # the worker imports torch on start: let that finish first
    return child, port, spool


def start_target(target: str, work: Path, tag: str,
                 shm: Path | None = None) -> tuple[Child | OrthancChild, int, str, Path]:
    """Start one receiver; returns (process, port, called AE title, folder its files land in)."""
    if target == "orthanc":
        orthanc = OrthancChild()
        return orthanc, orthanc.orthanc.dicom_port, "ORTHANC", Path()
    if target == "storescp":
        folder = work / f"storescp-{tag}"
        child, port = start_storescp(folder, work)
        return child, port, "STORESCP", folder
    if target == "bare":
        folder = work / f"bare-{tag}"
        port = free_port()
        child = start_python("bench.bare_scp", [str(port), str(folder)], work, f"bare-{tag}")
        wait_echo(child, port, "BARE")
        wait_idle(child.pid)
        return child, port, "BARE", folder
    data_dir = shm / tag / "var" if target == SHM_TARGET and shm is not None else None
    child, port, spool = start_sidecar(work, tag, data_dir=data_dir)
    return child, port, "SIDECAR", spool


def one_run(target: str, size: int, rnd: int, files: list[Path], warm: Path, work: Path,
            shm: Path | None = None) -> Run:
    tag = f"{target}-{size}-r{rnd}"
    child, port, aet, folder = start_target(target, work, tag, shm)
    try:
        storescu([warm], port, aet)  # first association and first store: code paths warm
        seconds = storescu(files, port, aet)
        got = (child.count() if isinstance(child, OrthancChild) else _count_files(folder)) - 1
        if got != len(files):
            raise RuntimeError(f"{target} kept {got} of {len(files)} files")
    finally:
        child.stop()
        if target == SHM_TARGET and shm is not None:
            shutil.rmtree(shm / tag, ignore_errors=True)  # tmpfs is memory: free it at once
    return Run(target, size, rnd, seconds, len(files))


def print_table(runs: list[Run], sizes: list[int], rounds: int, targets: tuple[str, ...]) -> None:
    print()
    print(f"Ingest: dcmtk storescu -> target, one association, {runs[0].n} MR slices (uint16), "
          f"median of {rounds} interleaved rounds")
    print(f"{'size':>8} | {'storescp img/s':>14} | {'orthanc':>8} | {'bare pynetdicom':>15} | {'sidecar':>8} | "
          f"{'sidecar/bare':>12} | {'sidecar/orthanc':>15} | {'sidecar/storescp':>16}")
    print("-" * 120)
    for size in sizes:
        by = {t: [r for r in runs if r.size == size and r.target == t] for t in TARGETS}
        rates = {t: median([r.rate for r in by[t]]) for t in TARGETS}
        paired_bare = [s.rate / b.rate for s, b in zip(by["sidecar"], by["bare"], strict=True)]
        paired_scp = [s.rate / c.rate for s, c in zip(by["sidecar"], by["storescp"], strict=True)]
        paired_orthanc = [s.rate / o.rate for s, o in zip(by["sidecar"], by["orthanc"], strict=True)]
        print(f"{f'{size}x{size}':>8} | {rates['storescp']:>14.0f} | {rates['orthanc']:>8.0f} | "
              f"{rates['bare']:>15.0f} | {rates['sidecar']:>8.0f} | {median(paired_bare):>11.2f}x | "
              f"{median(paired_orthanc):>14.2f}x | {median(paired_scp):>15.2f}x")
    print()
    if SHM_TARGET in targets:
        print(f"diagnostic, not durable: {SHM_TARGET} = the same sidecar with spool and journal on tmpfs "
              "(fsync costs nothing there)")
        for size in sizes:
            shm = [r for r in runs if r.size == size and r.target == SHM_TARGET]
            bare = [r for r in runs if r.size == size and r.target == "bare"]
            ratio = median([s.rate / b.rate for s, b in zip(shm, bare, strict=True)])
            print(f"{f'{size}x{size}':>8} | {SHM_TARGET} {median([r.rate for r in shm]):.0f} img/s = {ratio:.2f}x bare")
        print()
    print("per round (img/s):")
    for size in sizes:
        for t in targets:
            vals = ", ".join(f"{r.rate:.0f}" for r in runs if r.size == size and r.target == t)
            print(f"  {size:>4} {t:<13} {vals}")
    verdicts = []
    for size in sizes:
        by = {t: [r for r in runs if r.size == size and r.target == t] for t in TARGETS}
        ratio = median([s.rate / b.rate for s, b in zip(by["sidecar"], by["bare"], strict=True)])
        vs_orthanc = median([s.rate / o.rate for s, o in zip(by["sidecar"], by["orthanc"], strict=True)])
        verdicts.append(f"{size}: {'MET' if ratio >= 0.9 else 'NOT MET'} ({ratio:.2f}x bare), "
                        f"{'MET' if vs_orthanc >= 1.0 else 'NOT MET'} ({vs_orthanc:.2f}x Orthanc)")
    print(f"targets sidecar >= 0.9x bare pynetdicom and >= Orthanc: {'; '.join(verdicts)}")


# -- profile -----------------------------------------------------------------------------------

PHASE_ORDER = ("header_check", "duplicate_check", "encode_for_spool",
               "spool_commit_fsync", "os_fsync", "journal_commit", "handler_total")


def profile_phases(files: list[Path], warm: Path, size: int, work: Path) -> None:
    out = work / f"phases-{size}.json"
    child, port, _spool = start_sidecar(work, f"phases-{size}", module="bench.serve_profiled",
                                       env={"BENCH_PHASES": str(out)})
    try:
        storescu([warm], port, "SIDECAR")
        child.signal(signal.SIGUSR1)
        time.sleep(0.2)
        seconds = storescu(files, port, "SIDECAR")
    finally:
        child.stop()
    phases = json.loads(out.read_text())
    n = len(files)
    per_image_ms = seconds / n * 1000
    print(f"\nWhere the time goes, {size}x{size}: {n} images in {seconds:.2f} s = "
          f"{per_image_ms:.2f} ms per image (wall), timers around the handler's steps:")
    handler = phases.get("handler_total", [0, 0.0])[1] / n * 1000
    for name in PHASE_ORDER:
        count, total = phases.get(name, [0, 0.0])
        ms = total / n * 1000
        label = "  of which os.fsync" if name == "os_fsync" else name
        print(f"  {label:<20} {ms:7.3f} ms/image  ({100 * ms / per_image_ms:4.1f}% of wall)  calls={count}")
    rest = per_image_ms - handler
    print(f"  {'outside the handler':<20} {rest:7.3f} ms/image  ({100 * rest / per_image_ms:4.1f}% of wall)"
          "  = pynetdicom's DUL/association loops, PDU decode, transport, storescu")


def profile_cprofile(files: list[Path], warm: Path, size: int, work: Path, top: int = 25,
                     keep: Path | None = None) -> None:
    out = work / f"cprofile-{size}.pstats"
    child, port, _ = start_sidecar(work, f"cprofile-{size}", module="bench.serve_profiled",
                                   env={"BENCH_CPROFILE": str(out)})
    try:
        storescu([warm], port, "SIDECAR")
        seconds = storescu(files, port, "SIDECAR")
    finally:
        child.stop()
    n = len(files) + 1
    print(f"\ncProfile, every sidecar thread, {size}x{size}: {n} images in {seconds:.2f} s under the profiler "
          f"(cProfile slows Python code several-fold; read the shares, not the absolute times)")
    threads = Path(str(out) + ".threads.json")
    if threads.exists():
        print(f"  threads profiled: {threads.read_text()}")
    if keep is not None:
        shutil.copyfile(out, keep)
        print(f"  merged stats kept in {keep} (python -m pstats {keep})")
    st = pstats.Stats(str(out))
    blocking = ("acquire", "poll", "sleep", "select", "wait")
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]  # typeshed omits pstats.Stats.stats
        rows.append((tt, ct, nc, f"{Path(fname).name}:{line}({func})" if line else func,
                     any(b in func for b in blocking)))
    waiting = sorted((r for r in rows if r[4]), reverse=True)
    working = sorted((r for r in rows if not r[4]), reverse=True)
    print("  association threads only (AcceptorThread runs the handler, a DUL Thread reads the socket).")
    print("  blocking calls (a thread waiting, not working; both threads wait most of the time):")
    for tt, _ct, nc, name, _ in waiting[:5]:
        print(f"    {tt / n * 1000:8.3f} ms/img {nc / n:8.1f} calls/img  {name}")
    print(f"  top {top} by own time, excluding blocking calls (ms per image):")
    for tt, ct, nc, name, _ in working[:top]:
        print(f"    {tt / n * 1000:8.3f} own {ct / n * 1000:8.3f} cum {nc / n:8.1f} calls/img  {name}")
    groups: dict[str, float] = {}
    for (fname, _line, func), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]  # typeshed omits pstats.Stats.stats
        if any(b in func for b in blocking):
            continue
        if "fsync" in func:
            key = "os.fsync (spool file + folder)"
        elif "sqlite3" in func or "sqlite3" in fname:
            key = "sqlite (execute, incl. its WAL fsync on COMMIT)"
        elif "pynetdicom" in fname:
            key = "pynetdicom (python)"
        elif "pydicom" in fname:
            key = "pydicom (python)"
        elif "/sidecar/" in fname:
            key = "sidecar (python)"
        elif "structlog" in fname:
            key = "structlog"
        elif "recv" in func or "send" in func:
            key = "socket recv/send"
        elif "posix" in func or "io." in func or "BufferedWriter" in func or "pathlib" in fname:
            key = "file system calls (open/write/stat/rename/mkdir)"
        else:
            key = "other (stdlib: queue, threading, copy, re, ...)"
        groups[key] = groups.get(key, 0.0) + tt
    total_tt = sum(groups.values())
    print("  working time by kind (share of non-blocking time on the association threads):")
    for key, tt in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {100 * tt / total_tt:5.1f}%  {tt / n * 1000:8.3f} ms/img  {key}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="slices per run (default 300)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="matrix sizes (default 256 512)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--profile", action="store_true", help="also time the handler's steps and run cProfile")
    ap.add_argument("--profile-only", action="store_true", help="skip the table, only profile")
    ap.add_argument("--no-tmpfs", action="store_true",
                    help=f"leave out the diagnostic {SHM_TARGET} target (sidecar on /dev/shm)")
    ap.add_argument("--pstats-out", type=Path, help="keep the merged cProfile stats here (pstats format)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir="/tmp") as tmp:
        work = Path(tmp)
        t_start = time.monotonic()
        data = {s: write_slices(work / f"in-{s}", args.n, size=s, seed=1000 + s) for s in args.sizes}
        warm = {s: write_slices(work / f"warm-{s}", 1, size=s, seed=2000 + s)[0] for s in args.sizes}
        print(f"wrote {args.n} slices per size in {time.monotonic() - t_start:.1f} s to {work}")
        shm_ok = not args.no_tmpfs and Path("/dev/shm").is_dir()
        targets = (*TARGETS, SHM_TARGET) if shm_ok else TARGETS
        if not args.profile_only:
            runs: list[Run] = []
            with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir="/dev/shm" if shm_ok else tmp) as shm:
                for rnd in range(1, args.rounds + 1):
                    for size in args.sizes:
                        for target in targets:
                            r = one_run(target, size, rnd, data[size], warm[size], work, Path(shm))
                            runs.append(r)
                            print(f"  round {rnd} {size:>4} {target:<13} {r.seconds:6.2f} s  {r.rate:7.0f} img/s",
                                  flush=True)
            print_table(runs, args.sizes, args.rounds, targets)
        if args.profile or args.profile_only:
            for size in args.sizes:
                profile_phases(data[size], warm[size], size, work)
            profile_cprofile(data[args.sizes[0]], warm[args.sizes[0]], args.sizes[0], work,
                             keep=args.pstats_out)
        print(f"\nmachine: {machine_note()}; total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
