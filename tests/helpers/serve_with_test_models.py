"""`sidecar serve` with the test models: a subprocess entry point for restart tests.

A subprocess cannot receive test factories through `Seams`, so this module builds the service
the way `sidecar.commands.serve` does, plus `FACTORIES` from `tests.helpers.models`. Run it from
the repository root: `python -m tests.helpers.serve_with_test_models CONFIG_DIR`.
SIGTERM and SIGINT stop it cleanly; tests that need a crash send SIGKILL to its PID.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sidecar.app import Seams, Sidecar, serve_until_signalled
from sidecar.errors import ConfigError
from sidecar.logging import configure_logging
from sidecar.settings import load_settings
from tests.helpers.models import FACTORIES


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.helpers.serve_with_test_models CONFIG_DIR", file=sys.stderr)
        return 2
    try:
        settings = load_settings(Path(argv[0]))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.service.log_level, settings.service.log_format)
    serve_until_signalled(Sidecar(settings, Seams(factories=FACTORIES)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
