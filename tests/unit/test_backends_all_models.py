"""Every clinical model on onnxruntime: exported by its task, opened through the registry from a
models.yaml, and answering as the in-process model does on phantoms.

One export per model (the task's own `export`, which refuses a file that disagrees with torch on
its check phantoms) into a tmp folder laid out as `runs/<model>/export` would be; one models.yaml
naming every model's ONNX file(s) as conf/models.yaml would (hand_joints: `networks:`); then
each model is built twice by `models.registry.build_model` (in process, and from that file) and
its Findings on other phantoms are compared: same labels, names and counts, probabilities and
confidences within PROB_ATOL and CONF_ATOL, boxes within BOX_ATOL_PX, generated pixels within one
grey level (measured: one, on one elastogram).

Skipped, with the reason printed, where onnx or onnxruntime is missing (pip install '.[onnx]').
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml

from models.backends import InProcessConfig, TritonConfig
from models.backends.base import TensorSignature
from models.backends.export import ExportError, export_onnx
from models.base import ClinicalModel
from models.checkpoint import ModelUnavailable
from models.findings import Classification, Findings
from models.registry import ModelSpec, build_model
from sidecar.errors import ConfigError
from sidecar.settings import Settings, load_settings
from train.tasks import ExportRequest, ExportResult, load_tasks

pytest.importorskip("onnx", reason="onnx is not installed (pip install '.[onnx]'): no ONNX export to test")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install '.[onnx]')")

REPO = Path(__file__).resolve().parents[2]
#: float32 kernels differ in summation order. Measured on these phantoms: at most 6e-6 (gout_mtp1)
#: for a single network; 4.4e-5 for hand_joints' grades, whose crops are cut at the keypoints the
#: detector found, so a keypoint 1e-4 px away resamples the crop
PROB_ATOL = 2e-4
BOX_ATOL_PX = 0.05  # boxes follow the keypoints (soft-argmax expectations): measured 1.3e-4 px
CONF_ATOL = 1e-4  # joint confidence (heatmap spread): measured 1.3e-7


def _lge() -> list[pydicom.Dataset]:
    from train.phantoms.lge import demo_series

    return demo_series(seed=3, n_slices=6)


def _breast() -> list[pydicom.Dataset]:
    from train.phantoms.breast import KINDS, demo_series

    return demo_series(seed=5, kinds=KINDS)


def _hands() -> list[pydicom.Dataset]:
    from train.phantoms.hand import demo_series, hand_image

    return [*demo_series(seed=4), hand_image(9, n_hands=2).dataset]


def _joints(doppler: bool, cine: bool) -> Callable[[], list[pydicom.Dataset]]:
    def make() -> list[pydicom.Dataset]:
        from train.phantoms.joint_us import case_dataset, sample_cases

        return [case_dataset(c, doppler=doppler, cine=cine) for c in sample_cases(2, seed=21, joints_per_patient=2)]

    return make


def _mtp1() -> list[pydicom.Dataset]:
    from train.phantoms.mtp1 import case_dataset, sample_cases

    return [case_dataset(c) for c in sample_cases(2, seed=23, abnormal_share=0.5)]


#: model id -> phantoms of its domain (other seeds than the export's own check)
PHANTOMS: dict[str, Callable[[], list[pydicom.Dataset]]] = {
    "lge_qa": _lge,
    "breast_elastography": _breast,
    "hand_joints": _hands,
    "synovitis_sgs": _joints(doppler=False, cine=False),
    "synovitis_dgs": _joints(doppler=False, cine=True),
    "synovitis_spd": _joints(doppler=True, cine=False),
    "synovitis_dpd": _joints(doppler=True, cine=True),
    "gout_mtp1": _mtp1,
}


@dataclass(frozen=True)
class Exported:
    """The ONNX files of every model and the settings read from a models.yaml naming them."""

    folder: Path
    results: dict[str, ExportResult]
    settings: Settings


def _backend_entry(result: ExportResult, config_dir: Path) -> dict[str, object]:
    """The `backend:` mapping a site would write for these files (paths relative to the config)."""
    def rel(path: Path) -> str:  # "../runs/<model>/export/<file>.onnx", as in docs/configuration.md
        return os.path.relpath(path, config_dir)

    if len(result.networks) == 1 and not result.networks[0].network:
        return {"kind": "onnxruntime", "model_file": rel(result.model_file), "threads": 1}
    return {"kind": "onnxruntime", "threads": 1,
            "networks": {n.network: {"model_file": rel(n.model_file)} for n in result.networks}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; exports and forwards are small
    root = tmp_path_factory.mktemp("all-models")
    conf = root / "conf"
    conf.mkdir()
    shipped = yaml.safe_load((REPO / "conf" / "models.yaml").read_text(encoding="utf-8"))["models"]
    tasks = load_tasks()
    results: dict[str, ExportResult] = {}
    models: dict[str, object] = {}
    for model_id in PHANTOMS:
        export = tasks[model_id].export
        assert export is not None, f"{model_id}'s task offers no export"
        results[model_id] = export(ExportRequest(format="onnx", out_dir=root / "runs" / model_id / "export"))
        entry = dict(shipped[model_id])
        entry["weights"] = str((REPO / "conf" / entry["weights"]).resolve())
        entry["options"] = {**entry.get("options", {}), "torch_threads": 1}
        entry["backend"] = _backend_entry(results[model_id], conf)
        models[model_id] = entry
    (conf / "models.yaml").write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    try:
        yield Exported(root, results, load_settings(conf, env={}))
    finally:
        torch.set_num_threads(threads)


def _build(settings: Settings, model_id: str, onnx: bool) -> ClinicalModel:
    entry = settings.models[model_id]
    spec = ModelSpec(model_id, settings.model_weights(model_id), entry.sha256, entry.options,
                     settings.model_backend(model_id) if onnx else InProcessConfig())
    return build_model(spec)


def _assert_classifications_agree(a: Classification | None, b: Classification | None, where: str) -> None:
    assert (a is None) == (b is None), where
    if a is None or b is None:
        return
    assert a.label == b.label, f"{where}: {a.label} in process, {b.label} on onnxruntime"
    assert a.probabilities.keys() == b.probabilities.keys(), where
    for name, p in a.probabilities.items():
        assert abs(p - b.probabilities[name]) <= PROB_ATOL, f"{where} {name}: {p} vs {b.probabilities[name]}"
    assert (a.uncertain, a.source, a.finding_site, a.laterality) == (b.uncertain, b.source, b.finding_site,
                                                                     b.laterality), where


def assert_findings_agree(a: Findings, b: Findings) -> int:
    """In-process and onnxruntime Findings say the same within the tolerances; returns how many
    items were compared (a comparison of nothing is a failure)."""
    assert (a.model_id, a.model_version, a.notes) == (b.model_id, b.model_version, b.notes)
    assert len(a.classifications) == len(b.classifications)
    for i, (x, y) in enumerate(zip(a.classifications, b.classifications, strict=True)):
        _assert_classifications_agree(x, y, f"classification {i}")
    _assert_classifications_agree(a.summary, b.summary, "summary")
    assert [d.label for d in a.detections] == [d.label for d in b.detections]
    for i, (d, e) in enumerate(zip(a.detections, b.detections, strict=True)):
        np.testing.assert_allclose(d.box, e.box, atol=BOX_ATOL_PX, rtol=0, err_msg=f"detection {i} ({d.label}) box")
        assert abs(d.confidence - e.confidence) <= CONF_ATOL, f"detection {i} ({d.label})"
        assert (d.source, d.laterality) == (e.source, e.laterality)
        _assert_classifications_agree(d.grade, e.grade, f"detection {i} ({d.label}) grade")
    assert [(m.name, m.value, m.unit) for m in a.measurements] == [(m.name, m.value, m.unit) for m in b.measurements]
    assert len(a.images) == len(b.images)
    for i, (g, h) in enumerate(zip(a.images, b.images, strict=True)):
        assert g.pixels.shape == h.pixels.shape and g.source == h.source, f"image {i}"
        worst = int(np.max(np.abs(g.pixels.astype(np.int16) - h.pixels.astype(np.int16))))
        assert worst <= 1, f"image {i}: pixels differ by up to {worst} grey levels"
    assert [v.in_domain for v in a.domain] == [v.in_domain for v in b.domain]
    n = len(a.classifications) + len(a.detections) + len(a.images) + (a.summary is not None)
    assert n > 0, f"{a.model_id}: nothing to compare"
    return n


def _backend_names(model: object) -> list[str]:
    backends = getattr(model, "backends", None)
    if isinstance(backends, dict):
        return [b.name for b in backends.values()]
    return [model.backend.name]  # type: ignore[attr-defined]  # every single-network model holds `backend`


class TestEveryModelOnOnnxRuntime:
    @pytest.mark.parametrize("model_id", list(PHANTOMS))
    def test_findings_agree_with_the_inprocess_model(self, exported: Exported, model_id: str) -> None:
        """The model opened from models.yaml on onnxruntime gives the in-process Findings on phantoms."""
        reference = _build(exported.settings, model_id, onnx=False)
        other = _build(exported.settings, model_id, onnx=True)
        assert set(_backend_names(reference)) == {"inprocess"}
        assert set(_backend_names(other)) == {"onnxruntime"}
        datasets = PHANTOMS[model_id]()
        batch_a, batch_b = reference.prepare(datasets), other.prepare(datasets)
        assert assert_findings_agree(reference.predict(batch_a), other.predict(batch_b)) >= len(datasets)

    @pytest.mark.parametrize("model_id", list(PHANTOMS))
    def test_export_writes_the_version_and_agrees_within_the_tolerance(self, exported: Exported,
                                                                      model_id: str) -> None:
        """Each exported file carries the model id, card version (and network) and was within 1e-4."""
        import onnx

        version = _build(exported.settings, model_id, onnx=False).card.version
        for net in exported.results[model_id].networks:
            meta = {p.key: p.value for p in onnx.load(str(net.model_file)).metadata_props}
            want = {"model_id": model_id, "model_version": version, **({"network": net.network} if net.network else {})}
            assert meta == want
            assert 0.0 <= net.max_abs_diff <= ExportRequest.tolerance


class TestSeveralNetworks:
    def test_hand_joints_exports_and_opens_one_file_per_network(self, exported: Exported) -> None:
        """Detector and grader: two files, two onnxruntime backends, the grader with two inputs and outputs."""
        result = exported.results["hand_joints"]
        assert [(n.network, n.model_file.name) for n in result.networks] == [
            ("detector", "hand_joints_detector.onnx"), ("grader", "hand_joints_grader.onnx")]
        assert result.networks[1].input_names == ("crops", "joints")
        assert result.networks[1].output_names == ("shs_logits", "kl_logits")

    def test_one_model_file_for_a_model_of_two_networks_is_refused(self, exported: Exported) -> None:
        """`model_file` alone for hand_joints: unavailable, naming the network whose file is missing."""
        detector = exported.results["hand_joints"].networks[0].model_file
        from models.backends import OnnxRuntimeConfig

        with pytest.raises(ModelUnavailable, match="detector network"):
            build_model(ModelSpec("hand_joints", exported.settings.model_weights("hand_joints"), None, {},
                                  OnnxRuntimeConfig(model_file=detector)))

    def test_files_of_swapped_networks_are_refused(self, exported: Exported) -> None:
        """The grader's file named as the detector's is refused by its metadata, not run."""
        from models.backends import OnnxNetworkFile, OnnxRuntimeConfig

        det, grad = (n.model_file for n in exported.results["hand_joints"].networks)
        swapped = OnnxRuntimeConfig(networks=(OnnxNetworkFile("detector", grad), OnnxNetworkFile("grader", det)))
        with pytest.raises(ModelUnavailable, match="grader"):
            build_model(ModelSpec("hand_joints", exported.settings.model_weights("hand_joints"), None, {}, swapped))

    def test_triton_refuses_the_grader_and_closes_the_detector_backend(self, exported: Exported) -> None:
        """Triton serves one tensor each way: the grader is refused by name, and the detector's backend,
        opened first, is closed again (no client loop thread left running)."""
        pytest.importorskip("tritonclient.grpc.aio", reason="tritonclient[grpc] is not installed")
        from models.backends.pytriton_serve import free_port

        config = TritonConfig(endpoints=(f"127.0.0.1:{free_port()}",), deadline_ms=200)
        with pytest.raises(ModelUnavailable, match=r"hand_joints grader.*crops.*joints"):
            build_model(ModelSpec("hand_joints", exported.settings.model_weights("hand_joints"), None, {}, config))
        assert not [t for t in threading.enumerate() if t.name.startswith("triton-") and t.is_alive()]


class TestSettingsOfSeveralNetworks:
    def test_both_or_neither_of_model_file_and_networks_is_refused(self, tmp_path: Path) -> None:
        """models.yaml names a model's files one way: model_file, or one file per network."""
        for backend in ({"kind": "onnxruntime"},
                        {"kind": "onnxruntime", "model_file": "a.onnx", "networks": {"detector": {"model_file": "d.onnx"}}}):
            (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": {"hand_joints": {"backend": backend}}}),
                                                  encoding="utf-8")
            with pytest.raises(ConfigError, match=r"models\.yaml"):
                load_settings(tmp_path, env={})


class TestExportRules:
    def test_a_float16_module_is_not_exported(self, tmp_path: Path) -> None:
        """Exports are made from the float32 module: a half-precision one is refused, naming a tensor."""
        from models.gout_mtp1.wrapper import build

        model = build(REPO / "models" / "gout_mtp1" / "weights" / "demo.pt")
        with pytest.raises(ExportError, match="float16"):
            export_onnx(model.net.half(), model.tensor_signature(), tmp_path / "gout.onnx")

    def test_multi_tensor_forward_has_no_triton_repository(self, tmp_path: Path) -> None:
        """The elastography generator with its head gives two outputs: no config.pbtxt, a reason instead."""
        spec = load_tasks()["breast_elastography"]
        assert spec.export is not None
        with pytest.raises(ExportError, match=r"tsukuba_logits.*ONNX"):
            spec.export(ExportRequest(format="onnx", out_dir=tmp_path / "f", triton_repo=tmp_path / "repo"))

    def test_signature_names_every_tensor_in_order(self) -> None:
        """A signature's inputs and outputs list the first tensors then the extras, with their dtypes."""
        from models.backends import TensorSpec

        sig = TensorSignature("m", "1", "crops", (1, 8, 8), "a", (5,), extra_inputs=(TensorSpec("idx", (), "int64"),),
                              extra_outputs=(TensorSpec("b", (5,)),), network="grader")
        assert [(t.name, t.dtype) for t in sig.inputs] == [("crops", "float32"), ("idx", "int64")]
        assert [t.name for t in sig.outputs] == ["a", "b"]
        assert (sig.single_tensor, sig.served_name, sig.label) == (False, "m_grader", "m grader")


class TestTheBundledConfiguration:
    """conf/models.yaml runs every model on onnxruntime (bench.backends: 2-10x faster here); the
    bundled ONNX files must be exports of the bundled weights, answering as they do."""

    @pytest.mark.parametrize("model_id", list(PHANTOMS))
    def test_bundled_onnx_files_answer_as_the_bundled_weights(self, model_id: str) -> None:
        bundled = load_settings(REPO / "conf", env={})
        assert bundled.model_backend(model_id).kind == "onnxruntime", f"{model_id} is not on onnxruntime"
        reference = _build(bundled, model_id, onnx=False)
        served = _build(bundled, model_id, onnx=True)  # sha256 and model version checked on open
        assert set(_backend_names(served)) == {"onnxruntime"}
        datasets = PHANTOMS[model_id]()
        assert assert_findings_agree(reference.predict(reference.prepare(datasets)),
                                     served.predict(served.prepare(datasets))) >= len(datasets)

    def test_the_demo_config_copy_keeps_every_onnx_file_reachable(self, tmp_path: Path) -> None:
        """`write_demo_config` (sidecar demo, the viewer test) copies conf/ elsewhere: the ONNX
        files' relative paths must follow, or every model is unavailable there."""
        from sidecar.demo import PacsStandIn, write_demo_config

        pacs = PacsStandIn(tmp_path / "pacs")
        settings = load_settings(write_demo_config(tmp_path, pacs), env={})
        files: list[Path] = []
        for model_id in PHANTOMS:
            backend = settings.model_backend(model_id)
            assert backend.kind == "onnxruntime", model_id
            files += [backend.model_file] if backend.model_file else [n.model_file for n in backend.networks]
        assert len(files) == 9 and all(Path(f).is_file() for f in files), files
