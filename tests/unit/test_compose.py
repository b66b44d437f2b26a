"""docker-compose.yml, the Dockerfile and the Orthanc auto-forward rule hang together.

No Docker engine runs here: Debian's docker-compose (v1) validates the file with `config`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """`docker-compose config` output (the file as compose understands it)."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose (compose v1 validates offline)")
    env = {**os.environ, "ORTHANC_ADMIN_PASSWORD": "test-only"}
    done = subprocess.run([tool, "-f", str(COMPOSE), "config"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return dict(yaml.safe_load(done.stdout))


class TestCompose:
    def test_config_validates(self, resolved: dict[str, Any]) -> None:
        """docker-compose -f docker-compose.yml config passes, with the sidecar and Orthanc."""
        assert {"sidecar", "orthanc"} <= set(resolved["services"])

    def test_secrets_are_not_in_the_repository(self) -> None:
        """Without ORTHANC_ADMIN_PASSWORD compose refuses, naming the variable."""
        tool = shutil.which("docker-compose")
        assert tool is not None
        env = {k: v for k, v in os.environ.items() if k != "ORTHANC_ADMIN_PASSWORD"}
        done = subprocess.run([tool, "-f", str(COMPOSE), "config"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode != 0 and "ORTHANC_ADMIN_PASSWORD" in done.stderr

    def test_both_services_have_healthchecks_and_the_sidecar_waits_for_orthanc(
        self, resolved: dict[str, Any],
    ) -> None:
        services = resolved["services"]
        assert services["sidecar"]["healthcheck"]["test"] and services["orthanc"]["healthcheck"]["test"]
        assert services["sidecar"]["depends_on"]["orthanc"]["condition"] == "service_healthy"

    def test_journal_and_spool_live_on_a_volume(self, resolved: dict[str, Any]) -> None:
        vols = resolved["services"]["sidecar"]["volumes"]
        assert any(str(v).startswith("sidecar-data:/data") for v in vols)
        assert "sidecar-data" in resolved["volumes"]

    def test_ports_are_published_on_loopback_only(self, resolved: dict[str, Any]) -> None:
        for service in resolved["services"].values():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), port

    def test_sidecar_is_built_from_the_dockerfile(self, resolved: dict[str, Any]) -> None:
        build = resolved["services"]["sidecar"]["build"]
        assert Path(build["context"]) == ROOT and build["dockerfile"] == "Dockerfile"
        text = (ROOT / "Dockerfile").read_text()
        assert "FROM python:3.11-slim" in text
        assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
        assert re.search(r"^USER (?!root)\S+", text, re.MULTILINE), "the image must not run as root"
        assert "HEALTHCHECK" in text and "EXPOSE 11112" in text


class TestOrthancForwarding:
    def test_orthanc_knows_the_sidecar_and_loads_the_lua_rule(self, resolved: dict[str, Any]) -> None:
        env = resolved["services"]["orthanc"]["environment"]
        assert yaml.safe_load(env["ORTHANC__DICOM_MODALITIES"])["sidecar"] == ["SIDECAR", "sidecar", 11112]
        scripts = yaml.safe_load(env["ORTHANC__LUA_SCRIPTS"])
        mounts = resolved["services"]["orthanc"]["volumes"]
        assert any(str(m).endswith(f"{scripts[0]}:ro") and "deploy/orthanc/autoforward.lua" in str(m) for m in mounts)

    def test_lua_rule_forwards_every_modality_the_routes_handle(self) -> None:
        """conf/routes.yaml's modalities are all in the rule; results from the sidecar are not forwarded."""
        lua = (ROOT / "deploy/orthanc/autoforward.lua").read_text()
        forwarded = set(re.findall(r"(\w+) = true", lua))
        routes = yaml.safe_load((ROOT / "conf/routes.yaml").read_text())["routes"]
        handled = {m.upper() for r in routes for m in (r.get("match", {}).get("modality") or [])}
        assert handled and handled <= forwarded, f"not forwarded: {handled - forwarded}"
        assert "function OnStoredInstance" in lua and "SendToModality" in lua
        assert "RemoteAet" in lua  # the loop guard

    def test_compose_config_of_the_sidecar_points_results_at_orthanc(self) -> None:
        """deploy/sidecar/sidecar.yaml loads and sends to orthanc:4242."""
        from sidecar.settings import DicomDestination, ServiceSettings

        svc = ServiceSettings.model_validate(yaml.safe_load((ROOT / "deploy/sidecar/sidecar.yaml").read_text()))
        [dest] = svc.destinations
        assert isinstance(dest, DicomDestination)
        assert (dest.host, dest.port, dest.ae_title) == ("orthanc", 4242, "ORTHANC")
        assert svc.access.admits("ORTHANC", "172.18.0.2") and not svc.access.admits("STRANGER", "172.18.0.2")
