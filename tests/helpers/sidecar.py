"""A sidecar for tests: a config folder written to tmp, the test models, free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from sidecar.app import Seams, Sidecar
from sidecar.settings import load_settings
from tests.helpers.models import FACTORIES
from tests.helpers.ports import free_port


def write_config(
    folder: Path,
    *,
    destinations: list[dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    models: dict[str, Any] | None = None,
    **service: Any,
) -> Path:
    """Write sidecar.yaml, routes.yaml and models.yaml into `folder`; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    svc: dict[str, Any] = {
        "ae_title": "SIDECAR",
        "bind_host": "127.0.0.1",
        "port": free_port(),
        "data_dir": str(folder / "var"),
        "log_level": "warning",
        "log_format": "json",
        "limits": {"min_free_disk_bytes": 0},
        "sender": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0, "poll_s": 0.05, "echo_on_start": False},
        "worker": {"poll_s": 0.05, "torch_threads": 1},
        "destinations": destinations or [],
    }
    svc.update(service)
    if routes is None:
        routes = [{
            "name": "brightness-mr", "model": "brightness", "mode": "series",
            "match": {"modality": ["MR"]}, "outputs": ["sr"],
            "destinations": [d["name"] for d in svc["destinations"]], "quiet_s": 1.0,
        }]
    (folder / "sidecar.yaml").write_text(yaml.safe_dump(svc))
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}))
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": models or {"brightness": {}, "failing": {}}}))
    return folder


@contextmanager
def running_sidecar(config: Path, seams: Seams | None = None) -> Iterator[Sidecar]:
    seams = seams or Seams()
    seams.factories = {**FACTORIES, **seams.factories}
    app = Sidecar(load_settings(config), seams)
    app.start()
    try:
        yield app
    finally:
        app.stop()
