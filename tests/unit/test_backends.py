"""Inference backends: the same tensors in, the same answers out; Triton's deadline, retry and failures.

Tests needing an optional install or a real Triton skip with the reason printed (pytest -ra).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from models.backends import (
    BackendUnavailable,
    InferenceFailed,
    InProcessConfig,
    OnnxRuntimeConfig,
    TensorSignature,
    TritonConfig,
)
from models.backends.triton import EndpointFailed, TritonBackend, TritonRequest
from models.checkpoint import ModelUnavailable, sha256_of
from models.lge_qa.wrapper import LgeQaModel, build
from models.registry import ModelSpec, build_model
from sidecar.alerts.fanout import Alert, AlertFanout
from sidecar.journal import InstanceRecord, Journal
from sidecar.pipeline.worker import Worker
from sidecar.routing.rules import Route
from sidecar.settings import ModelEntry
from tests.helpers.models import BrightnessModel
from tests.helpers.virtual_time import VirtualTimeLoop

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "lge_qa" / "weights" / "demo.pt"
LOGIT_ATOL = 1e-4  # float32 kernels differ in summation order; measured ~1e-6 here
PROB_ATOL = 1e-5

SIG = TensorSignature("toy", "1", "slices", (1, 4, 4), "logits", ())


def _toy(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).mean(axis=1).astype(np.float32)


# -- shared inputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model() -> LgeQaModel:
    return build(DEMO, {"torch_threads": 2})


@pytest.fixture(scope="module")
def phantom_datasets() -> list[pydicom.Dataset]:
    from train.phantoms.lge import demo_series

    return demo_series(seed=3, n_slices=6)


@pytest.fixture(scope="module")
def onnx_file(demo_model: LgeQaModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install '.[onnx]'): no ONNX export to test")
    from models.backends.export import export_onnx

    return export_onnx(demo_model.net, demo_model.tensor_signature(), tmp_path_factory.mktemp("onnx") / "lge_qa.onnx")


@pytest.fixture(scope="module")
def triton_endpoint(onnx_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("tritonclient.grpc.aio", reason="tritonclient[grpc] is not installed (pip install '.[triton]')")
    from models.backends.pytriton_serve import PytritonServer, TritonStartError, triton_python

    python, why = triton_python()
    if python is None:
        pytest.skip(f"no real Triton server: {why}")
    log_file = tmp_path_factory.mktemp("triton") / "server.log"
    try:
        server = PytritonServer(python, onnx_file, log_file=log_file).__enter__()
    except TritonStartError as exc:
        pytest.skip(f"no real Triton server: {exc}")
    try:
        yield server.endpoint
    finally:
        server.stop()


# -- a scripted transport at the TritonTransport seam ------------------------------------------


class ScriptedTransport:
    """Endpoints that answer (with `_toy`), refuse, or hang; records each call."""

    def __init__(self, behaviour: dict[str, str], versions: dict[str, str] | None = None) -> None:
        self.behaviour = behaviour
        self.versions = versions or {}
        self.calls: list[tuple[str, int, float, int]] = []  # endpoint, n, timeout_s, priority

    async def served_version(self, endpoint: str, model_name: str, timeout_s: float) -> str | None:
        return self.versions.get(endpoint)

    async def infer(self, endpoint: str, request: TritonRequest, timeout_s: float) -> np.ndarray:
        self.calls.append((endpoint, len(request.inputs), timeout_s, request.priority))
        what = self.behaviour.get(endpoint, "down")
        if what == "down":
            raise EndpointFailed(endpoint, "UNAVAILABLE", "connection refused")
        if what == "hang":
            await asyncio.sleep(3600)
        return _toy(request.inputs)

    async def close(self) -> None:
        return None


def _x(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 1, 4, 4)).astype(np.float32)


class TestTritonRetry:
    def test_down_endpoint_retries_on_the_second(self) -> None:
        """The first endpoint refusing sends the same request to the other one, which answers."""
        transport = ScriptedTransport({"a:1": "down", "b:1": "ok"})
        backend = TritonBackend(TritonConfig(endpoints=("a:1", "b:1"), deadline_ms=500), SIG, transport, VirtualTimeLoop())
        try:
            np.testing.assert_allclose(backend.run(_x()), _toy(_x()))
        finally:
            backend.close()
        assert [c[0] for c in transport.calls] == ["a:1", "b:1"]

    def test_both_down_fails_with_each_reason_within_the_deadline(self) -> None:
        """Two hung endpoints, each given half the 300 ms deadline: InferenceFailed names both, and comes
        when the deadline is spent, not later (virtual time: exact, and no real waiting)."""
        transport = ScriptedTransport({"a:1": "hang", "b:1": "hang"})
        loop = VirtualTimeLoop()
        backend = TritonBackend(TritonConfig(endpoints=("a:1", "b:1"), deadline_ms=300), SIG, transport, loop)
        t0 = loop.time()
        try:
            with pytest.raises(InferenceFailed) as err:
                backend.run(_x())
            elapsed = loop.time() - t0
        finally:
            backend.close()
        assert elapsed == pytest.approx(0.3, abs=1e-6)
        assert [c[2] for c in transport.calls] == pytest.approx([0.15, 0.15], abs=1e-6)
        assert "a:1: DEADLINE_EXCEEDED after 150 ms" in str(err.value)
        assert "b:1: DEADLINE_EXCEEDED after 150 ms" in str(err.value)

    def test_hung_first_endpoint_leaves_the_retry_half_the_deadline(self) -> None:
        """A hang costs the first attempt its share only (200 of 400 ms); the second endpoint gets the
        other half and answers, 200 ms in (virtual time)."""
        transport = ScriptedTransport({"a:1": "hang", "b:1": "ok"})
        loop = VirtualTimeLoop()
        backend = TritonBackend(TritonConfig(endpoints=("a:1", "b:1"), deadline_ms=400), SIG, transport, loop)
        t0 = loop.time()
        try:
            np.testing.assert_allclose(backend.run(_x()), _toy(_x()))
            elapsed = loop.time() - t0
        finally:
            backend.close()
        assert elapsed == pytest.approx(0.2, abs=1e-6)
        assert [c[0] for c in transport.calls] == ["a:1", "b:1"]
        assert [c[2] for c in transport.calls] == pytest.approx([0.2, 0.2], abs=1e-6)

    def test_endpoint_serving_another_model_version_is_refused(self) -> None:
        """A server whose model_version differs is not used; the retry goes to the right version."""
        transport = ScriptedTransport({"a:1": "ok", "b:1": "ok"}, versions={"a:1": "0.9-old", "b:1": "1"})
        backend = TritonBackend(TritonConfig(endpoints=("a:1", "b:1"), deadline_ms=500), SIG, transport, VirtualTimeLoop())
        try:
            backend.run(_x())
            only_old = TritonBackend(TritonConfig(endpoints=("a:1",), deadline_ms=500), SIG, transport, VirtualTimeLoop())
            with pytest.raises(InferenceFailed, match=r"VERSION_MISMATCH.*0\.9-old"):
                only_old.run(_x())
            only_old.close()
        finally:
            backend.close()
        assert [c[0] for c in transport.calls] == ["b:1"]

    def test_only_one_retry_even_with_more_endpoints(self) -> None:
        """Three endpoints down: two are tried (one retry), the third is not."""
        transport = ScriptedTransport({})
        backend = TritonBackend(TritonConfig(endpoints=("a:1", "b:1", "c:1"), deadline_ms=300), SIG, transport, VirtualTimeLoop())
        try:
            with pytest.raises(InferenceFailed):
                backend.run(_x())
        finally:
            backend.close()
        assert len(transport.calls) == 2

    def test_failed_endpoint_is_tried_last_during_its_cooldown(self) -> None:
        """After a refusal, later calls go to the healthy endpoint first (no wasted attempt)."""
        transport = ScriptedTransport({"a:1": "down", "b:1": "ok"})
        backend = TritonBackend(TritonConfig(endpoints=("a:1", "b:1"), deadline_ms=500), SIG, transport, VirtualTimeLoop())
        try:
            for _ in range(4):
                backend.run(_x())
        finally:
            backend.close()
        assert [c[0] for c in transport.calls] == ["a:1", "b:1", "b:1", "b:1", "b:1"]

    def test_large_batches_are_split_and_carry_the_priority(self) -> None:
        """40 slices with max_batch_size 16 go as 16+16+8, each with the configured priority."""
        transport = ScriptedTransport({"a:1": "ok"})
        backend = TritonBackend(TritonConfig(endpoints=("a:1",), priority=1, max_batch_size=16), SIG, transport)
        try:
            out = backend.run(_x(40))
        finally:
            backend.close()
        assert out.shape == (40,)
        assert sorted(c[1] for c in transport.calls) == [8, 16, 16]
        assert {c[3] for c in transport.calls} == {1}


# -- a fake Triton gRPC server: the real tritonclient.grpc.aio client against it ---------------


class _FakeTriton:
    """Triton's GRPCInferenceService answering ModelInfer with `_toy`, or refusing, or sleeping."""

    def __init__(self, mode: str, version: str | None = None) -> None:
        import grpc
        from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

        self.mode, self.requests = mode, list[Any]()
        pb, outer = service_pb2, self

        class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
            def ModelConfig(self, request: Any, context: Any) -> Any:
                config = model_config_pb2.ModelConfig(name=request.name)
                if version is not None:
                    config.parameters["model_version"].string_value = version
                return pb.ModelConfigResponse(config=config)

            def ModelInfer(self, request: Any, context: Any) -> Any:
                outer.requests.append(request)
                if outer.mode == "error":
                    context.abort(grpc.StatusCode.UNAVAILABLE, "model is unloading")
                if outer.mode == "slow":
                    time.sleep(2.0)
                shape = list(request.inputs[0].shape)
                x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(shape)
                y = _toy(x).reshape(-1, 1)
                rsp = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
                out = rsp.outputs.add()
                out.name, out.datatype = "logits", "FP32"
                out.shape.extend(y.shape)
                rsp.raw_output_contents.append(y.tobytes())
                return rsp

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture()
def fake_triton() -> Iterator[Any]:
    pytest.importorskip("tritonclient.grpc.aio", reason="tritonclient[grpc] is not installed (pip install '.[triton]')")
    servers: list[_FakeTriton] = []

    def start(mode: str, version: str | None = None) -> _FakeTriton:
        servers.append(_FakeTriton(mode, version))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _closed_endpoint() -> str:
    from models.backends.pytriton_serve import free_port

    return f"127.0.0.1:{free_port()}"


class TestTritonGrpcClient:
    def test_grpc_client_sends_priority_and_time_left_as_server_timeout(self, fake_triton: Any) -> None:
        """A real gRPC request carries the priority level and the deadline as Triton's timeout (a deadline
        long enough that a loaded machine still answers in it: the test is about what is sent)."""
        server = fake_triton("ok")
        backend = TritonBackend(TritonConfig(endpoints=(server.endpoint,), deadline_ms=30_000, priority=1), SIG)
        try:
            np.testing.assert_allclose(backend.run(_x()), _toy(_x()), rtol=1e-6)
        finally:
            backend.close()
        [req] = server.requests
        assert req.parameters["priority"].uint64_param == 1
        assert 0 < req.parameters["timeout"].int64_param <= 30_000_000

    def test_grpc_client_reads_the_served_version_and_refuses_another(self, fake_triton: Any) -> None:
        """The model_version in Triton's model config is read once; another version is refused."""
        right, wrong = fake_triton("ok", version="1"), fake_triton("ok", version="2-other")
        backend = TritonBackend(TritonConfig(endpoints=(wrong.endpoint, right.endpoint), deadline_ms=30_000), SIG)
        try:
            backend.run(_x())
            backend.run(_x())
        finally:
            backend.close()
        assert wrong.requests == [] and len(right.requests) == 2

    def test_refused_connection_retries_on_the_second_endpoint(self, fake_triton: Any) -> None:
        """Nothing listening on the first endpoint: the live second endpoint answers."""
        server = fake_triton("ok")
        backend = TritonBackend(TritonConfig(endpoints=(_closed_endpoint(), server.endpoint), deadline_ms=30_000), SIG)
        try:
            np.testing.assert_allclose(backend.run(_x()), _toy(_x()), rtol=1e-6)
        finally:
            backend.close()

    def test_server_error_and_slow_server_fail_within_the_deadline(self, fake_triton: Any) -> None:
        """UNAVAILABLE from one, no answer in time from the other (it sleeps 2 s): the failure names
        both, and the slow one was given no more than what was left of the 1500 ms deadline. (How
        the deadline is split is pinned in virtual time above; this one is over real gRPC.)"""
        erring, slow = fake_triton("error"), fake_triton("slow")
        backend = TritonBackend(TritonConfig(endpoints=(erring.endpoint, slow.endpoint), deadline_ms=1500), SIG)
        try:
            with pytest.raises(InferenceFailed) as err:
                backend.run(_x())
        finally:
            backend.close()
        assert "UNAVAILABLE" in str(err.value)
        budget = re.search(r"DEADLINE_EXCEEDED after (\d+) ms", str(err.value))
        assert budget is not None and 0 < int(budget.group(1)) <= 1500


# -- the three backends agree ------------------------------------------------------------------


class TestBackendsAgree:
    def test_onnxruntime_agrees_with_inprocess(self, demo_model: LgeQaModel, onnx_file: Path,
                                               phantom_datasets: list[pydicom.Dataset]) -> None:
        """Same prepared slices: logits within 1e-4, probabilities within 1e-5, same labels."""
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (a base dependency)")
        other = build_model(ModelSpec("lge_qa", DEMO, None, {}, OnnxRuntimeConfig(model_file=onnx_file)))
        assert isinstance(other, LgeQaModel)
        self._agree(demo_model, other, phantom_datasets)

    def test_triton_agrees_with_inprocess(self, demo_model: LgeQaModel, triton_endpoint: str,
                                          phantom_datasets: list[pydicom.Dataset]) -> None:
        """Same prepared slices through a real Triton: the same tolerances and labels."""
        other = build_model(ModelSpec("lge_qa", DEMO, None, {},
                                      TritonConfig(endpoints=(triton_endpoint,), deadline_ms=5000)))
        assert isinstance(other, LgeQaModel)
        try:
            self._agree(demo_model, other, phantom_datasets)
        finally:
            other.backend.close()

    @staticmethod
    def _agree(reference: LgeQaModel, other: LgeQaModel, datasets: list[pydicom.Dataset]) -> None:
        batch = reference.prepare(datasets)
        np.testing.assert_allclose(other.logits(batch), reference.logits(batch), atol=LOGIT_ATOL, rtol=0)
        np.testing.assert_allclose(other.probabilities(batch), reference.probabilities(batch), atol=PROB_ATOL, rtol=0)
        a, b = reference.predict(batch), other.predict(batch)
        assert [c.label for c in a.classifications] == [c.label for c in b.classifications]
        assert a.model_version == b.model_version


# -- the registry opens the configured backend -------------------------------------------------


class TestRegistry:
    def test_inprocess_is_the_default_backend(self) -> None:
        """A spec without a backend runs the torch module in process."""
        model = build_model(ModelSpec("lge_qa", DEMO, sha256_of(DEMO), {}))
        assert isinstance(model, LgeQaModel) and model.backend.name == "inprocess"

    def test_onnx_file_of_another_version_makes_the_model_unavailable(self, onnx_file: Path,
                                                                       tmp_path: Path) -> None:
        """An ONNX file exported from other weights is refused, naming both versions."""
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (a base dependency)")
        import onnx

        model = onnx.load(str(onnx_file))
        for prop in model.metadata_props:
            if prop.key == "model_version":
                prop.value = "9.9.9-other"
        other = tmp_path / "other.onnx"
        onnx.save(model, str(other))
        with pytest.raises(ModelUnavailable, match=r"9\.9\.9-other"):
            build_model(ModelSpec("lge_qa", DEMO, None, {}, OnnxRuntimeConfig(model_file=other)))

    def test_model_without_the_seam_cannot_leave_the_process(self) -> None:
        """A model without tensor_signature/use_backend asked for Triton is unavailable, with why."""
        with pytest.raises(ModelUnavailable, match="in process only"):
            build_model(ModelSpec("brightness", None, None, {}, TritonConfig(endpoints=("127.0.0.1:1",))),
                        {"brightness": lambda weights, options: BrightnessModel()})

    def test_triton_down_at_start_keeps_the_model_loaded(self) -> None:
        """Warm-up failing on Triton is logged; the model stays, so its jobs fail visibly later."""
        pytest.importorskip("tritonclient.grpc.aio", reason="tritonclient[grpc] is not installed")
        model = build_model(ModelSpec("lge_qa", DEMO, None, {},
                                      TritonConfig(endpoints=(_closed_endpoint(),), deadline_ms=200)))
        assert isinstance(model, LgeQaModel)
        try:
            assert model.backend.name == "triton"
        finally:
            model.backend.close()

    def test_missing_install_says_what_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without onnxruntime (a broken install) the backend is unavailable and the message says what to install."""
        import builtins

        real_import = builtins.__import__

        def no_onnxruntime(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "onnxruntime":
                raise ImportError("No module named 'onnxruntime'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
        from models.backends.onnx import import_onnxruntime

        with pytest.raises(BackendUnavailable, match=r"pip install onnxruntime"):
            import_onnxruntime()


class TestSettings:
    def test_backend_accepts_the_bare_word_and_typed_mappings(self, tmp_path: Path) -> None:
        """`inprocess`, an onnxruntime file and Triton endpoints all validate to backend configs."""
        assert isinstance(ModelEntry.model_validate({"backend": "inprocess"}).backend.to_config(tmp_path),
                          InProcessConfig)
        onnx = ModelEntry.model_validate({"backend": {"kind": "onnxruntime", "model_file": "m.onnx"}})
        assert onnx.backend.to_config(tmp_path).model_file == tmp_path / "m.onnx"
        triton = ModelEntry.model_validate({"backend": {"kind": "triton", "endpoints": ["gpu1:8001", "gpu2:8001"],
                                                        "deadline_ms": 400, "priority": 1}})
        cfg = triton.backend.to_config(tmp_path)
        assert cfg.endpoints == ("gpu1:8001", "gpu2:8001") and cfg.deadline_ms == 400

    def test_bad_backend_settings_are_refused_with_the_key(self, tmp_path: Path) -> None:
        """A bare 'triton' without endpoints, or an endpoint without a port, stops the start."""
        from sidecar.errors import ConfigError
        from sidecar.settings import load_settings

        for backend in ("triton", {"kind": "triton", "endpoints": ["gpu1"]}, {"kind": "triton", "endpoints": []}):
            (tmp_path / "models.yaml").write_text(
                __import__("yaml").safe_dump({"models": {"lge_qa": {"backend": backend}}}), encoding="utf-8")
            with pytest.raises(ConfigError, match=r"models\.yaml") as err:
                load_settings(tmp_path, env={})
            assert "backend" in str(err.value)


# -- an alert route whose backend fails is never silent ----------------------------------------


class _Recording:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


class TestAlertRouteFailure:
    def test_backend_failure_fails_the_job_and_raises_an_ai_unavailable_alert(
        self, tmp_path: Path, phantom_datasets: list[pydicom.Dataset]
    ) -> None:
        """Both endpoints down: the job fails with the reason, and the alert channels hear
        'AI unavailable' once (a rerun stays quiet)."""
        model = build(DEMO)
        model.use_backend(TritonBackend(TritonConfig(endpoints=("a:1", "b:1"), deadline_ms=250),
                                        model.tensor_signature(), ScriptedTransport({}), VirtualTimeLoop()))
        journal = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}")
        ds = phantom_datasets[0]
        path = tmp_path / "slice.dcm"
        ds.save_as(path, enforce_file_format=True)
        journal.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                                               str(ds.StudyInstanceUID), "MR", str(path), 1))
        route = Route.model_validate({"name": "lge", "model": "lge_qa", "mode": "instance",
                                      "outputs": ["sr", "alert"], "destinations": ["pacs"]})
        channel = _Recording()
        fanout = AlertFanout([channel])
        worker = Worker(journal, {"lge_qa": model}, [route], tmp_path / "results", fanout=fanout)
        journal.enqueue_job(series_uid=str(ds.SeriesInstanceUID), instance_uid=str(ds.SOPInstanceUID),
                            model_id="lge_qa", model_version=model.card.version, revision=0, route="lge", priority=0)
        job = journal.claim_job()
        assert job is not None
        outcome = worker.run_job(job)
        worker.run_job(job)  # a rerun of the same job
        model.backend.close()
        assert fanout.flush(timeout_s=30.0)
        assert not outcome.ok and "InferenceFailed" in outcome.reason and "a:1" in outcome.reason
        [alert] = channel.alerts
        assert alert.label == "ai_unavailable" and alert.received_at is None
        assert "NOT ASSESSED" in alert.lines[0] and "InferenceFailed" in alert.lines[2]
        assert "Phantom" not in " ".join(alert.lines)
        assert [k for k, _, _ in journal.alerts(str(ds.SeriesInstanceUID))] == [alert.key]

    def test_failure_on_a_route_without_alerts_raises_none(
        self, tmp_path: Path, phantom_datasets: list[pydicom.Dataset]
    ) -> None:
        """A series route without `alert` output fails its job as before, with no alert."""
        journal = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}")
        ds = phantom_datasets[0]
        journal.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                                               str(ds.StudyInstanceUID), "MR", str(tmp_path / "x.dcm"), 1))
        channel = _Recording()
        route = Route.model_validate({"name": "r", "model": "gone", "destinations": ["pacs"]})
        fanout = AlertFanout([channel])
        worker = Worker(journal, {}, [route], tmp_path / "results", fanout=fanout)
        journal.enqueue_job(series_uid=str(ds.SeriesInstanceUID), instance_uid="", model_id="gone",
                            model_version="1", revision=0, route="r", priority=10)
        [outcome] = worker.drain()
        assert fanout.flush(timeout_s=30.0)
        assert not outcome.ok and channel.alerts == []


def test_fixture_threads_do_not_leak() -> None:
    """Backends closed above leave no triton-* loop thread running (close() joins it)."""
    assert not [t for t in threading.enumerate() if t.name.startswith("triton-") and t.is_alive()]
