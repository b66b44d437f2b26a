"""Two sidecars on one PostgreSQL journal and one shared spool; one is SIGKILLed mid-job.

Both run as subprocesses (this module is also their entry point: `python -m
tests.integration.test_shared_journal CONFIG` serves the test models plus `slow`, which takes
`delay_s` per forward pass so that a kill lands inside a job). Three dcmtk `storescu` clients
send six MR series, split over the two nodes; a dcmtk `storescp` with `+uf` is the PACS (one
file per object received, so a resend cannot hide by overwriting). Node A is killed while it
holds a running job and owes nothing to the PACS; node B re-claims that job when its lease runs
out and finishes everything. At the PACS: exactly one SR per series, covering the whole series,
and no SOP Instance UID twice. Skipped, with the reason, where PostgreSQL or psycopg is missing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest

from sidecar.journal import Journal
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.dicom_factory import make_mr_series, write_series
from tests.helpers.models import BrightnessModel, _Batch
from tests.helpers.postgres import require_postgres
from tests.helpers.processes import SidecarProcess, wait_for
from tests.helpers.sidecar import write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

START_TIMEOUT_S = 90.0  # two cold starts at once import torch twice; far slower on a loaded machine
LEASE_S = 2.0
DELAY_S = 1.0  # per forward pass of the `slow` model
N_SERIES = 6
PER_SERIES = 4
CLIENTS = 3
SETTLE_S = 1.5


class SlowModel(BrightnessModel):
    """The brightness model, `delay_s` slower per forward pass."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def predict(self, batch: _Batch) -> Any:
        time.sleep(self.delay_s)
        return super().predict(batch)


def build_slow(weights: Path | None = None, options: dict[str, Any] | None = None) -> SlowModel:
    return SlowModel(float((options or {}).get("delay_s", DELAY_S)))


def serve(argv: Sequence[str]) -> int:
    """The subprocess entry point: `serve_with_test_models` with `slow` among the factories."""
    from tests.helpers import models, serve_with_test_models

    models.FACTORIES["slow"] = build_slow
    return serve_with_test_models.main(list(argv))


class Node(SidecarProcess):
    """One sidecar subprocess running this module's entry point; killed or stopped by its PID."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(config, log, module="tests.integration.test_shared_journal",
                         start_timeout_s=START_TIMEOUT_S, stop_grace_s=15.0)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def _count(url: str, sql: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def _configs(tmp_path: Path, url: str, pacs_port: int) -> list[Path]:
    shared = tmp_path / "shared"  # spool and results, as on an NFS mount every node sees
    routes = [{"name": "slow-mr", "model": "slow", "mode": "series", "match": {"modality": ["MR"]},
               "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 2.0}]
    dest = [{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}]
    return [
        write_config(tmp_path / f"conf-{name}", routes=routes, destinations=dest,
                     models={"slow": {"options": {"delay_s": DELAY_S}}}, data_dir=str(shared),
                     journal_url=url, journal_lease_s=LEASE_S, node_name=name)
        for name in ("a", "b")
    ]


class TestSharedJournal:
    def test_killed_node_jobs_finish_on_the_other_and_each_series_is_reported_once(
        self, tmp_path: Path, nodes: list[Node]
    ) -> None:
        """SIGKILL one of two nodes mid-job: the other re-claims it; one SR per series, no duplicates."""
        url = require_postgres().fresh_url("shared")
        Journal(url).close()  # create the schema before two nodes race for it
        series: dict[str, set[str]] = {}
        batches: list[list[Path]] = [[] for _ in range(CLIENTS)]
        for k in range(N_SERIES):
            datasets = make_mr_series(PER_SERIES, seed=900 + k, images_in_acquisition=PER_SERIES)
            for ds, path in zip(datasets, write_series(tmp_path / "in" / str(k), datasets), strict=True):
                series.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
                batches[k % CLIENTS].append(path)

        with StoreSCP(tmp_path / "pacs", ae_title="PACS", extra_args=["+uf"]) as pacs:
            cfg_a, cfg_b = _configs(tmp_path, url, pacs.port)
            a = Node(cfg_a, tmp_path / "sidecar-a.log").spawn()
            b = Node(cfg_b, tmp_path / "sidecar-b.log").spawn()
            nodes.extend([a, b])
            a.wait_ready()
            b.wait_ready()

            results: list[subprocess.CompletedProcess[str]] = []
            clients = [threading.Thread(target=lambda i=i: results.append(
                storescu(batches[i], (a, b)[i % 2].port, aet=f"CONSOLE{i}", called_aet="SIDECAR")))
                for i in range(CLIENTS)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(60)
            assert [r.returncode for r in results] == [0] * CLIENTS, [r.stderr[-500:] for r in results]

            def a_is_mid_job() -> bool:
                return (_count(url, "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND owner = 'a'") == 1
                        and _count(url, "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND owner = 'a'") == 0)

            wait_for(a_is_mid_job, 20, "node a running a job")
            a.kill()

            pacs.wait_for_files(N_SERIES, timeout=40 + LEASE_S)
            wait_for(lambda: _count(url, "SELECT COUNT(*) FROM outbox WHERE state != 'sent'") == 0
                      and _count(url, "SELECT COUNT(*) FROM jobs WHERE state != 'done'") == 0,
                      20, "every job done and every result sent")
            time.sleep(SETTLE_S)

            received = [pydicom.dcmread(p) for p in pacs.files()]
            sops = Counter(str(ds.SOPInstanceUID) for ds in received)
            assert all(n == 1 for n in sops.values()), "a SOP Instance UID reached the PACS twice"
            assert len(received) == N_SERIES, [p.name for p in pacs.files()]
            for series_uid, sources in series.items():
                covering = [ds for ds in received if sources <= {
                    str(el.value) for el in ds.iterall() if el.keyword == "ReferencedSOPInstanceUID"}]
                assert len(covering) == 1, f"series {series_uid[-8:]}: {len(covering)} SRs cover it"
            assert _count(url, "SELECT COUNT(*) FROM jobs WHERE attempts = 2") >= 1, "no job was re-claimed"
            assert _count(url, "SELECT COUNT(*) FROM events WHERE kind = 'reclaimed'") >= 1
            b.terminate()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
