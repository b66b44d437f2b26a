"""The command line: config errors exit 2 with the file and key; route explain; status."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.__main__ import main
from sidecar.commands import route_explain
from tests.helpers.dicom_factory import make_mr, make_us
from tests.helpers.sidecar import write_config

REPO = Path(__file__).resolve().parents[2]


class TestCli:
    def test_invalid_config_exits_2_naming_file_and_key(self, tmp_path: Path) -> None:
        """`sidecar serve` with a bad port prints file, key and expectation, exit code 2."""
        cfg = write_config(tmp_path / "conf", port=70000)
        proc = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--config", str(cfg)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2
        assert "sidecar.yaml" in proc.stderr and "port" in proc.stderr and "65536" in proc.stderr

    def test_unknown_destination_in_route_is_a_config_error(self, tmp_path: Path) -> None:
        """A route naming a destination that does not exist is refused at load."""
        cfg = write_config(tmp_path / "conf", routes=[{"name": "r", "model": "brightness",
                                                       "destinations": ["nowhere"]}])
        assert main(["status", "--config", str(cfg)]) == 2

    def test_route_explain_shows_each_condition_and_winner(self, tmp_path: Path) -> None:
        """explain prints every condition of the tried rules and the rule that matched."""
        mr = tmp_path / "mr.dcm"
        make_mr(seed=1).save_as(mr, enforce_file_format=True)
        us = tmp_path / "us.dcm"
        make_us(seed=1).save_as(us, enforce_file_format=True)
        cfg = write_config(tmp_path / "conf")
        out = io.StringIO()
        assert route_explain(cfg, [mr, us], out=out) == 0
        text = out.getvalue()
        assert "brightness-mr" in text and "MATCHED" in text
        assert "no route matched" in text
        assert "Phantom" not in text  # no patient name

    def test_route_explain_on_bundled_conf(self, tmp_path: Path) -> None:
        """The bundled routes load and explain a file without error."""
        mr = tmp_path / "mr.dcm"
        make_mr(seed=2).save_as(mr, enforce_file_format=True)
        out = io.StringIO()
        assert route_explain(REPO / "conf", [mr], out=out) == 0
        assert "lge-qa-psir" in out.getvalue()

    def test_route_explain_reports_unreadable_file(self, tmp_path: Path) -> None:
        """A file that is not DICOM is named and the exit code is 1."""
        junk = tmp_path / "junk.dcm"
        junk.write_bytes(b"not dicom at all")
        cfg = write_config(tmp_path / "conf")
        out = io.StringIO()
        assert route_explain(cfg, [junk], out=out) == 1
        assert "not a readable DICOM file" in out.getvalue()

    def test_status_on_empty_journal(self, tmp_path: Path, capsys) -> None:
        """status prints the sections with zero counts on a new journal."""
        cfg = write_config(tmp_path / "conf")
        assert main(["status", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "series: (none)" in out and "dead letters: 0" in out


class TestEnvironment:
    def test_admin_token_comes_from_the_environment(self, tmp_path: Path) -> None:
        """SIDECAR_WEB_ADMIN_TOKEN and SIDECAR_WEB_PORT set the nested web keys; the token stays secret."""
        from sidecar.settings import load_settings

        cfg = write_config(tmp_path / "conf")
        s = load_settings(cfg, env={"SIDECAR_WEB_ADMIN_TOKEN": "s3cret-token", "SIDECAR_WEB_PORT": "0"})
        assert s.service.web.admin_token is not None
        assert s.service.web.admin_token.get_secret_value() == "s3cret-token"
        assert s.service.web.port == 0
        assert "s3cret-token" not in repr(s)


class TestModelBackends:
    def test_backend_in_models_yaml_reaches_the_model_factory(self, tmp_path: Path) -> None:
        """models.yaml's ONNX Runtime backend reaches the model: per-network files that do not exist
        make it unavailable, naming the missing file (every built-in model has the seam now)."""
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (a base dependency)")
        from sidecar.pipeline.model_set import load_models
        from sidecar.settings import load_settings

        weights = REPO / "models" / "hand_joints" / "weights" / "demo.pt"
        routes = [{"name": "h", "model": "hand_joints", "match": {"modality": ["DX"]}}]
        networks = {n: {"model_file": str(tmp_path / f"{n}.onnx")} for n in ("detector", "grader")}
        cfg = write_config(tmp_path / "conf", routes=routes, models={"hand_joints": {
            "weights": str(weights), "backend": {"kind": "onnxruntime", "networks": networks}}})
        settings = load_settings(cfg)
        models, unavailable = load_models(settings, settings.routes, {})
        assert "hand_joints" not in models
        assert "detector.onnx does not exist" in unavailable["hand_joints"]
