"""The real sidecar service (with the test models), instrumented for `bench.ingest --profile`.

`python -m bench.serve_profiled CONFIG_DIR` builds the service exactly as
`tests.helpers.serve_with_test_models` does, and optionally:

- BENCH_PHASES=FILE: wall-clock timers around each step of the C-STORE handler (decode, header
  check, duplicate check, encode for the spool, spool write + fsync, journal commit, whole
  handler), written to FILE as JSON on SIGTERM. SIGUSR1 resets the counters (after warm-up).
  The timers wrap the functions from outside (this process only); sidecar code is unchanged.
- BENCH_CPROFILE=FILE: cProfile on every thread started after start-up (pynetdicom runs each
  association and its DUL reader on their own threads), merged and dumped to FILE (pstats)
  on SIGTERM. pyinstrument is not used because it samples only the thread that starts it.
"""

from __future__ import annotations

import cProfile
import functools
import inspect
import json
import os
import pstats
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

_lock = threading.Lock()
_phases: dict[str, list[float]] = {}
_profiles: list[tuple[str, cProfile.Profile]] = []


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            with _lock:
                acc = _phases.setdefault(name, [0, 0.0])
                acc[0] += 1
                acc[1] += dt
    return wrapper


def _install_phase_timers() -> None:
    from pynetdicom import events

    import sidecar.ingest.listener as listener_mod
    import sidecar.ingest.service as service_mod
    from sidecar.ingest.spool import Spool
    from sidecar.journal import Journal

    os.fsync = _timed("os_fsync", os.fsync)  # spool file and folder fsyncs (SQLite's are in C)
    # Wrapped in place, so the patched names are set with setattr (mypy rightly refuses method assignment).
    patches: list[tuple[object, str, str]] = [
        (service_mod, "read_header_file", "header_check"),
        (Spool, "commit", "spool_commit_fsync"),
        (Journal, "record_instance", "journal_commit"),
        (Journal, "instance", "duplicate_check"),
        (listener_mod.Listener, "_handle_store", "handler_total"),
        (events.Event, "encoded_dataset", "encode_for_spool"),
        (events.Event, "dataset", "decode_dataset"),  # a property: its getter is timed
    ]
    for owner, attr, phase in patches:
        original = inspect.getattr_static(owner, attr)
        if isinstance(original, property) and original.fget is not None:
            setattr(owner, attr, property(_timed(phase, original.fget)))
        else:
            setattr(owner, attr, _timed(phase, getattr(owner, attr)))


def _install_thread_profiler() -> None:
    def hook(frame: FrameType, event: str, arg: object) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile()
        with _lock:
            _profiles.append((threading.current_thread().name, prof))
        prof.enable()

    threading.setprofile(hook)


def _dump_profiles(path: Path) -> None:
    """Merge the profiles of the association threads (pynetdicom's AcceptorThread runs the handlers,
    its DUL reactor runs on a plain Thread); start-up threads (worker, scheduler) are left out."""
    threading.setprofile(None)
    stats: pstats.Stats | None = None
    names: dict[str, int] = {}
    with _lock:
        profiles = list(_profiles)
    for name, prof in profiles:
        prefix = name.split("@")[0].split("-")[0]
        names[prefix] = names.get(prefix, 0) + 1
        if prefix not in ("AcceptorThread", "Thread"):
            continue
        try:
            prof.create_stats()
        except Exception:  # a profiler still enabled on a running thread: take what it has
            continue
        if not getattr(prof, "stats", None):
            continue
        if stats is None:
            stats = pstats.Stats(prof)
        else:
            stats.add(prof)
    if stats is not None:
        stats.dump_stats(str(path))
    Path(str(path) + ".threads.json").write_text(json.dumps(names))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.serve_profiled CONFIG_DIR", file=sys.stderr)
        return 2
    phases_out = os.environ.get("BENCH_PHASES")
    profile_out = os.environ.get("BENCH_CPROFILE")
    if phases_out:
        _install_phase_timers()

    from sidecar.app import Seams, Sidecar, serve_until_signalled
    from sidecar.logging import configure_logging
    from sidecar.settings import load_settings
    from tests.helpers.models import FACTORIES

    settings = load_settings(Path(argv[0]))
    configure_logging(settings.service.log_level, settings.service.log_format)
    app = Sidecar(settings, Seams(factories=FACTORIES))

    def _reset(signum: int, frame: FrameType | None) -> None:
        with _lock:
            _phases.clear()

    signal.signal(signal.SIGUSR1, _reset)
    if profile_out:
        _install_thread_profiler()
    serve_until_signalled(app)  # SIGTERM/SIGINT stop it
    if phases_out:
        with _lock:
            Path(phases_out).write_text(json.dumps(_phases))
    if profile_out:
        _dump_profiles(Path(profile_out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
