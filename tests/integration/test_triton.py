"""A real Triton server (`tritonserver` from nvidia-pytriton, CPU, Python callback path) serving the
exported LGE model, with the sidecar's gRPC asyncio client and worker in front of it.

Skipped, with the reason printed, where tritonclient[grpc], onnx/onnxruntime or a Python that
loads pytriton (`.venv-triton/` or $SIDECAR_TRITON_PYTHON; see docs/scale-out.md) is missing.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.backends import InferenceFailed, TritonConfig
from models.backends.pytriton_serve import PytritonServer, TritonStartError, free_port, triton_python
from models.backends.triton import TritonBackend
from models.lge_qa.wrapper import LgeQaModel, build
from sidecar.journal import InstanceRecord, Journal
from sidecar.pipeline.worker import Worker
from sidecar.routing.rules import Route

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "lge_qa" / "weights" / "demo.pt"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PytritonServer, Path]]:
    for module, extra in (("tritonclient.grpc.aio", "triton"), ("onnx", "onnx"), ("onnxruntime", "onnx")):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install '.[{extra}]')")
    python, why = triton_python()
    if python is None:
        pytest.skip(f"no real Triton server: {why}")
    from models.backends.export import export_onnx

    folder = tmp_path_factory.mktemp("triton")
    model = build(DEMO)
    onnx_file = export_onnx(model.net, model.tensor_signature(), folder / "lge_qa.onnx")
    try:
        server = PytritonServer(python, onnx_file, log_file=folder / "server.log").__enter__()
    except TritonStartError as exc:
        pytest.skip(f"no real Triton server: {exc}")
    try:
        yield server, onnx_file
    finally:
        server.stop()


@pytest.fixture(scope="module")
def phantoms() -> list[pydicom.Dataset]:
    from train.phantoms.lge import demo_series

    return demo_series(seed=11, n_slices=6)


def _triton_model(endpoints: tuple[str, ...], deadline_ms: float = 3000, priority: int = 1) -> LgeQaModel:
    model = build(DEMO)
    model.use_backend(TritonBackend(TritonConfig(endpoints=endpoints, deadline_ms=deadline_ms, priority=priority),
                                    model.tensor_signature()))
    return model


class TestRealTriton:
    def test_streaming_lge_jobs_run_on_triton_with_inprocess_answers(
        self, served: tuple[PytritonServer, Path], phantoms: list[pydicom.Dataset], tmp_path: Path
    ) -> None:
        """Per-slice jobs through the worker on Triton: all done, same labels as in process."""
        server, _ = served
        model = _triton_model((server.endpoint,))
        journal = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}")
        for ds in phantoms:
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            journal.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                                   str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), "MR",
                                                   str(path), 1))
            journal.enqueue_job(series_uid=str(ds.SeriesInstanceUID), instance_uid=str(ds.SOPInstanceUID),
                                model_id="lge_qa", model_version=model.card.version, revision=0, route="lge",
                                priority=0)
        route = Route.model_validate({"name": "lge", "model": "lge_qa", "mode": "instance", "outputs": ["sr"],
                                      "destinations": ["pacs"]})
        try:
            outcomes = Worker(journal, {"lge_qa": model}, [route], tmp_path / "results", max_batch=4).drain()
            reference = build(DEMO)
            batch = reference.prepare(phantoms)
            np.testing.assert_allclose(model.logits(batch), reference.logits(batch), atol=1e-4, rtol=0)
        finally:
            model.backend.close()
        assert len(outcomes) == len(phantoms) and all(o.ok for o in outcomes)
        assert len(journal.outbox(str(phantoms[0].SeriesInstanceUID))) == len(phantoms)

    def test_down_endpoint_retries_on_the_live_server(self, served: tuple[PytritonServer, Path],
                                                      phantoms: list[pydicom.Dataset]) -> None:
        """Nothing on the first endpoint: the retry reaches the real server and answers."""
        server, _ = served
        model = _triton_model((f"127.0.0.1:{free_port()}", server.endpoint))
        try:
            findings = model.predict(model.prepare(phantoms[:2]))
        finally:
            model.backend.close()
        assert len(findings.classifications) == 2

    def test_both_down_fails_with_the_reason_within_the_deadline(self, phantoms: list[pydicom.Dataset]) -> None:
        """Two closed endpoints: InferenceFailed names both, well within the deadline."""
        pytest.importorskip("tritonclient.grpc.aio", reason="tritonclient[grpc] is not installed (pip install '.[triton]')")
        model = _triton_model((f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"), deadline_ms=300)
        t0 = time.perf_counter()
        try:
            with pytest.raises(InferenceFailed, match="UNAVAILABLE"):
                model.predict(model.prepare(phantoms[:1]))
        finally:
            model.backend.close()
        assert time.perf_counter() - t0 < 0.3 + 0.2

    def test_slow_server_is_abandoned_at_the_deadline(self, served: tuple[PytritonServer, Path],
                                                      phantoms: list[pydicom.Dataset], tmp_path: Path) -> None:
        """A server taking 800 ms per execution against a 300 ms deadline: failure, in time."""
        python, _ = triton_python()
        assert python is not None
        with PytritonServer(python, served[1], delay_ms=800, log_file=tmp_path / "slow.log") as slow:
            model = _triton_model((slow.endpoint,), deadline_ms=300)
            t0 = time.perf_counter()
            try:
                with pytest.raises(InferenceFailed, match="DEADLINE_EXCEEDED"):
                    model.predict(model.prepare(phantoms[:1]))
            finally:
                model.backend.close()
            assert time.perf_counter() - t0 < 0.3 + 0.2

    def test_dynamic_batcher_merges_concurrent_requests(self, served: tuple[PytritonServer, Path],
                                                        phantoms: list[pydicom.Dataset]) -> None:
        """48 single-slice requests from 8 threads run in fewer Triton executions than requests."""
        server, _ = served

        def counts() -> tuple[float, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as rsp:
                text = rsp.read().decode()
            req = sum(float(v) for v in re.findall(r'^nv_inference_count\{model="lge_qa".*\} (\S+)$', text, re.M))
            exe = sum(float(v) for v in re.findall(r'^nv_inference_exec_count\{model="lge_qa".*\} (\S+)$', text, re.M))
            return req, exe

        # the default level (2) queues for up to 5 s; level 1 would reject after its 500 ms on a busy CPU
        model = _triton_model((server.endpoint,), deadline_ms=10_000, priority=2)
        x = model.prepare(phantoms[:1]).tensor.numpy()
        before = counts()
        errors: list[BaseException] = []

        def client() -> None:
            try:
                for _ in range(6):
                    model.backend.run(x)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(8)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            model.backend.close()
        after = counts()
        assert not errors
        n_requests, n_executions = after[0] - before[0], after[1] - before[1]
        assert n_requests == 48 and n_executions < n_requests
