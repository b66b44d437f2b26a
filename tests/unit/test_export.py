"""`python -m train lge_qa export`: a Triton model repository and an ONNX file that agree with torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.backends import TensorSignature
from models.backends.export import ExportError, TritonBatching, render_config
from models.lge_qa.wrapper import build
from train.cli import main
from train.tasks import ExportRequest, load_tasks

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "lge_qa" / "weights" / "demo.pt"

pytest.importorskip("onnx", reason="onnx is not installed (pip install '.[onnx]'): exports cannot be written")


def _parse(config: str) -> object:
    """config.pbtxt parsed with Triton's own ModelConfig protobuf (skip where tritonclient is missing)."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed: cannot parse config.pbtxt")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install '.[onnx]')")
    out = tmp_path_factory.mktemp("export")
    status = main(["lge_qa", "export", "--format", "onnx", "--out", str(out / "files"),
                   "--triton-repo", str(out / "repo")])
    assert status == 0
    return out / "files", out / "repo", (out / "repo" / "lge_qa" / "config.pbtxt").read_text(encoding="utf-8")


class TestOnnxExport:
    def test_writes_the_triton_repository_layout_and_the_onnx_file(self, onnx_export: tuple[Path, Path, str]) -> None:
        """repo/lge_qa/config.pbtxt, repo/lge_qa/1/model.onnx, and the ONNX file for onnxruntime."""
        files, repo, _ = onnx_export
        assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
            "lge_qa", "lge_qa/1", "lge_qa/1/model.onnx", "lge_qa/config.pbtxt"]
        assert (files / "lge_qa.onnx").read_bytes() == (repo / "lge_qa" / "1" / "model.onnx").read_bytes()

    def test_config_names_tensors_shapes_batching_priorities_and_timeouts(
        self, onnx_export: tuple[Path, Path, str]
    ) -> None:
        """Triton's ModelConfig parses the file: names, shapes, preferred sizes, two levels, queue timeouts."""
        config = _parse(onnx_export[2])
        c: Any = config
        assert c.name == "lge_qa" and c.platform == "onnxruntime_onnx" and c.max_batch_size == 16
        [inp], [out] = c.input, c.output
        size = build(DEMO).config.size  # the crop the demo checkpoint was trained with
        assert (inp.name, list(inp.dims)) == ("slices", [1, size, size])
        assert (out.name, list(out.dims), list(out.reshape.shape)) == ("logits", [1], [])
        db = c.dynamic_batching
        assert list(db.preferred_batch_size) == [4, 8, 16] and db.max_queue_delay_microseconds == 2000
        assert db.priority_levels == 2 and db.default_priority_level == 2
        assert db.priority_queue_policy[1].default_timeout_microseconds == 500_000
        assert db.default_queue_policy.default_timeout_microseconds == 5_000_000
        assert db.default_queue_policy.allow_timeout_override
        assert c.parameters["model_version"].string_value == build(DEMO).card.version

    def test_onnx_file_agrees_with_the_inprocess_model(self, onnx_export: tuple[Path, Path, str]) -> None:
        """onnxruntime on the exported file gives torch's logits within 1e-4 on phantom slices."""
        from models.backends import OnnxRuntimeConfig
        from models.backends.onnx import OnnxRuntimeBackend
        from train.phantoms.lge import demo_series

        model = build(DEMO)
        x = model.prepare(demo_series(seed=5, n_slices=5)).tensor.numpy()
        onnx = OnnxRuntimeBackend(OnnxRuntimeConfig(model_file=onnx_export[0] / "lge_qa.onnx"),
                                  model.tensor_signature())
        np.testing.assert_allclose(onnx.run(x), model.backend.run(x), atol=1e-4, rtol=0)
        np.testing.assert_allclose(onnx.run(x[:1]), model.backend.run(x[:1]), atol=1e-4, rtol=0)  # batch of one


class TestTorchScriptExport:
    def test_torchscript_repository_uses_libtorch_names_and_agrees(self, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
        """TorchScript goes to pytorch_libtorch with <name>__0 tensors; the check against torch passes."""
        assert main(["lge_qa", "export", "--format", "torchscript", "--out", str(tmp_path / "f"),
                     "--triton-repo", str(tmp_path / "repo")]) == 0
        line = capsys.readouterr().out
        assert "slices__0 -> logits__0" in line
        found = re.search(r"max \|torch - export\| ([0-9.e+-]+)", line)
        assert found is not None
        diff = float(found.group(1))
        assert diff <= 1e-4
        text = (tmp_path / "repo" / "lge_qa" / "config.pbtxt").read_text(encoding="utf-8")
        assert 'platform: "pytorch_libtorch"' in text and 'name: "slices__0"' in text
        assert (tmp_path / "repo" / "lge_qa" / "1" / "model.pt").is_file()


class TestExportRules:
    def test_too_tight_tolerance_refuses_the_export(self, tmp_path: Path) -> None:
        """An export that differs from torch by more than the tolerance is an error, not a file to trust."""
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install '.[onnx]')")
        spec = load_tasks()["lge_qa"]
        assert spec.export is not None
        with pytest.raises(ExportError, match="tolerance"):
            spec.export(ExportRequest(format="onnx", out_dir=tmp_path, tolerance=-1.0))

    def test_preferred_batch_sizes_must_fit_the_max_batch_size(self) -> None:
        """A preferred size above max_batch_size is refused when the batching is built."""
        with pytest.raises(ExportError, match="preferred"):
            TritonBatching(max_batch_size=8, preferred_batch_sizes=(4, 16))

    def test_config_of_a_vector_output_keeps_its_dims(self) -> None:
        """A model whose output has per-item dims writes them as they are (no reshape)."""
        sig = TensorSignature("seg", "1", "image", (1, 64, 64), "scores", (5,))
        text = render_config(sig, "onnx")
        assert "dims: [ 5 ]" in text and "reshape" not in text

    def test_task_without_export_is_a_clear_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A model whose task offers no export says it runs in process only (exit status 2)."""
        without = [name for name, spec in load_tasks().items() if spec.export is None]
        if not without:
            pytest.skip("every registered task offers an export")
        assert main([without[0], "export"]) == 2
        assert "in process only" in capsys.readouterr().err
