"""A model on Triton Inference Server over gRPC asyncio (`pip install .[triton]`).

One forward pass has one deadline (`TritonConfig.deadline_ms`, set for the route's alert budget).
It goes to one endpoint and, if that fails, once more to another, each attempt getting an equal
share of the time left; an endpoint that failed is tried last for `cooldown_s`. Requests carry
Triton's priority level (streaming alerts jump the dynamic batcher's queue) and a server-side
timeout equal to the time left, so a request that waited too long in the queue is dropped
rather than computed late. When no endpoint answers in time the pass raises `InferenceFailed`
naming each endpoint and what it said: the worker fails the job with that reason.

It serves forwards of one tensor in and one out (lge_qa, gout_mtp1, the synovitis variants, the
hand-joints detector, and the elastography generator of a checkpoint without the Tsukuba head);
a signature with extra inputs or outputs is refused when the backend is opened, naming them.

Before its first request to an endpoint the backend reads the model's configuration there: a
`model_version` parameter (written by `python -m train <model> export`) that differs from the
loaded weights' version refuses that endpoint (`VERSION_MISMATCH`), since its answers would be
recorded under the wrong version. A server whose configuration has no such parameter (a
repository not made by the export, pytriton) is accepted, with a warning.

The worker is a thread; the gRPC client is asyncio. The backend owns one event loop on its own
daemon thread and hands it each call (`tritonclient.http`, built on gevent, breaks across
threads, so it is not used). The network calls go through `TritonTransport`, so tests can put a
scripted transport (endpoints down, slow, answering) in place of gRPC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog

from models.backends.base import (
    BackendUnavailable,
    InferenceFailed,
    TensorSignature,
    TritonConfig,
    as_inputs,
    as_output,
)

log = structlog.get_logger("models.backends.triton")

INSTALL_HINT = "install the optional backend with: pip install '.[triton]'"


@dataclass(frozen=True)
class TritonRequest:
    """One inference request as the transport sends it."""

    model_name: str
    model_version: str
    input_name: str
    output_name: str
    inputs: np.ndarray  # (n, *input_shape) float32
    priority: int


class EndpointFailed(Exception):
    """One endpoint did not answer a request: `status` is the gRPC/Triton status name."""

    def __init__(self, endpoint: str, status: str, detail: str = "") -> None:
        super().__init__(f"{endpoint}: {status} {detail}".strip())
        self.endpoint, self.status, self.detail = endpoint, status, detail


class TritonTransport(Protocol):
    """Sends one request to one endpoint; runs on the backend's event loop."""

    async def infer(self, endpoint: str, request: TritonRequest, timeout_s: float) -> np.ndarray:
        """The output tensor, or `EndpointFailed` (including when `timeout_s` passes)."""
        ...

    async def served_version(self, endpoint: str, model_name: str, timeout_s: float) -> str | None:
        """The `model_version` parameter of the model's configuration there; None when it has none."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


def import_grpc_aio() -> Any:
    """`tritonclient.grpc.aio`, or `BackendUnavailable` saying how to install it."""
    try:
        import tritonclient.grpc.aio as grpc_aio
    except ImportError as exc:
        raise BackendUnavailable(f"tritonclient[grpc] is not installed; {INSTALL_HINT}") from exc
    return grpc_aio


class GrpcAioTransport:
    """`tritonclient.grpc.aio`: one client (one HTTP/2 channel) per endpoint, made on first use."""

    def __init__(self) -> None:
        self._aio = import_grpc_aio()
        from tritonclient.utils import InferenceServerException

        self._server_error = InferenceServerException
        self._clients: dict[str, Any] = {}

    def _client(self, endpoint: str) -> Any:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = self._aio.InferenceServerClient(endpoint)
        return client

    async def infer(self, endpoint: str, request: TritonRequest, timeout_s: float) -> np.ndarray:
        aio = self._aio
        x = request.inputs
        inp = aio.InferInput(request.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:
            result = await self._client(endpoint).infer(
                request.model_name, [inp], model_version=request.model_version,
                outputs=[aio.InferRequestedOutput(request.output_name)],
                priority=request.priority,
                timeout=max(1, int(timeout_s * 1e6)),  # server side, microseconds: queue timeout
                client_timeout=timeout_s,  # the gRPC deadline
            )
        except self._server_error as exc:
            status = str(exc.status() or "ERROR").removeprefix("StatusCode.")
            raise EndpointFailed(endpoint, status, str(exc.message() or "")[:200]) from exc
        out = result.as_numpy(request.output_name)
        if out is None:
            raise EndpointFailed(endpoint, "NO_OUTPUT", f"the answer has no {request.output_name!r}")
        return np.asarray(out)

    async def served_version(self, endpoint: str, model_name: str, timeout_s: float) -> str | None:
        try:
            answer = await self._client(endpoint).get_model_config(model_name, as_json=True, client_timeout=timeout_s)
        except self._server_error as exc:
            status = str(exc.status() or "ERROR").removeprefix("StatusCode.")
            raise EndpointFailed(endpoint, status, str(exc.message() or "")[:200]) from exc
        parameter = answer.get("config", {}).get("parameters", {}).get("model_version", {})
        return parameter.get("string_value") or None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


class TritonBackend:
    """Forward passes on Triton with a deadline, a priority and one retry on another endpoint."""

    name = "triton"

    def __init__(
        self, config: TritonConfig, signature: TensorSignature, transport: TritonTransport | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """`loop` is the event loop the backend runs (a new one by default; tests pass one on virtual time)."""
        if not config.endpoints:
            raise BackendUnavailable("triton backend needs at least one endpoint (host:port)")
        if not signature.single_tensor:
            raise BackendUnavailable(
                f"triton serves forwards of one tensor in and one out; the {signature.label} forward takes "
                f"{[t.name for t in signature.inputs]} and gives {[t.name for t in signature.outputs]} "
                "(run it in process or on onnxruntime)")
        config = config.for_network(signature)
        self.config = config
        self.signature = signature
        self.model_name = config.model_name or signature.served_name
        self.input_name = config.input_name or signature.input_name
        self.output_name = config.output_name or signature.output_name
        self.deadline_s = config.deadline_ms / 1000.0
        self._transport = transport if transport is not None else GrpcAioTransport()
        self._next = 0  # round-robin start, touched only on the loop thread
        self._failed_at: dict[str, float] = {}
        self._checked: set[str] = set()  # endpoints whose served model version was read
        self._loop = loop if loop is not None else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"triton-{self.model_name}",
                                         daemon=True)
        self._thread.start()

    # -- called from the worker thread -----------------------------------------------------

    def run(self, inputs: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        future = asyncio.run_coroutine_threadsafe(self._infer(x), self._loop)
        try:
            return future.result(timeout=self.deadline_s + 1.0)
        except concurrent.futures.TimeoutError as exc:  # the loop itself is stuck: never wait longer
            future.cancel()
            raise InferenceFailed(f"triton {self.model_name}: no answer within {self.config.deadline_ms:.0f} ms "
                                  "(client loop stalled)") from exc

    def run_named(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run` by name: the one input in, the one output out (multi-tensor forwards are refused
        when the backend is opened)."""
        x = as_inputs(inputs, self.signature)[self.signature.input_name]
        return {self.signature.output_name: self.run(x)}

    def close(self) -> None:
        if self._loop.is_closed():
            return
        done = asyncio.run_coroutine_threadsafe(self._transport.close(), self._loop)
        try:
            done.result(timeout=5.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            self._loop.close()

    # -- on the backend's loop --------------------------------------------------------------

    async def _attempt(self, endpoint: str, request: TritonRequest, budget: float) -> np.ndarray:
        """Check the served version on first contact, then send the request (one budget for both)."""
        if endpoint not in self._checked:
            started = self._loop.time()
            served = await self._transport.served_version(endpoint, self.model_name, budget)
            if served is not None and served != self.signature.version:
                raise EndpointFailed(endpoint, "VERSION_MISMATCH", f"serves {self.model_name} {served}; the "
                                     f"loaded weights are {self.signature.version}")
            if served is None:
                log.warning("triton_model_version_unchecked", model=self.model_name, endpoint=endpoint,
                            detail="the served configuration has no model_version parameter")
            self._checked.add(endpoint)
            budget -= self._loop.time() - started
        return await self._transport.infer(endpoint, request, max(budget, 0.001))

    def _order(self) -> list[str]:
        """Endpoints round-robin, those that failed within `cooldown_s` last."""
        eps = list(self.config.endpoints)
        start = self._next % len(eps)
        self._next += 1
        rotated = eps[start:] + eps[:start]
        now = time.monotonic()
        fresh = [e for e in rotated if now - self._failed_at.get(e, -1e9) >= self.config.cooldown_s]
        return fresh + [e for e in rotated if e not in fresh]

    async def _infer(self, x: np.ndarray) -> np.ndarray:
        deadline = self._loop.time() + self.deadline_s
        size = max(1, self.config.max_batch_size)
        chunks = [x[i:i + size] for i in range(0, len(x), size)]
        outs = await asyncio.gather(*(self._infer_chunk(c, deadline) for c in chunks))
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    async def _infer_chunk(self, x: np.ndarray, deadline: float) -> np.ndarray:
        request = TritonRequest(self.model_name, self.config.model_version, self.input_name, self.output_name,
                                x, self.config.priority)
        attempts = self._order()[:2]  # one try, one retry on another endpoint
        failures: list[str] = []
        for i, endpoint in enumerate(attempts):
            left = deadline - self._loop.time()
            if left <= 0.001:
                failures.append(f"{endpoint}: not tried, deadline spent")
                break
            budget = left / (len(attempts) - i)
            try:
                out = await asyncio.wait_for(self._attempt(endpoint, request, budget), budget)
            except EndpointFailed as exc:
                failures.append(str(exc))
            except TimeoutError:
                failures.append(f"{endpoint}: DEADLINE_EXCEEDED after {budget * 1000:.0f} ms")
            else:
                self._failed_at.pop(endpoint, None)
                return as_output(out, self.signature, len(x))
            self._failed_at[endpoint] = time.monotonic()
            log.warning("triton_endpoint_failed", model=self.model_name, endpoint=endpoint,
                        detail=failures[-1][:200], retry=i + 1 < len(attempts))
        raise InferenceFailed(f"triton {self.model_name}: no endpoint answered (deadline "
                              f"{self.config.deadline_ms:.0f} ms): " + "; ".join(failures))
