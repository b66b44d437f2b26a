"""A real Triton server for tests, benchmarks and demos: `tritonserver` from `nvidia-pytriton`
serving an exported ONNX file through Triton's Python callback path (on CPU).

Production runs the exported repository (`python -m train <model> export --triton-repo DIR`)
on NVIDIA's Triton image with its onnxruntime backend; this stand-in serves the same ONNX file,
tensor names, shapes, dynamic batching and priority levels, so the sidecar's gRPC client is
tested against the real server.

Two halves, because pytriton does not load under every Python (it failed under a pyenv-built
3.11.7 and works under Debian's python3.11):
- `serve()` runs *inside* a Python that has ``nvidia-pytriton`` and ``onnxruntime`` (run this file
  by path: ``.venv-triton/bin/python models/backends/pytriton_serve.py --onnx FILE ...``); it
  imports nothing from this project.
- `PytritonServer` starts and stops that process from the project's Python (stdlib only).
  `triton_python()` finds the serving Python: ``$SIDECAR_TRITON_PYTHON``, else
  ``.venv-triton/bin/python`` at the repository root (see docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[2]


def triton_python() -> tuple[Path | None, str]:
    """(a Python that can import pytriton, '') or (None, why not)."""
    configured = os.environ.get("SIDECAR_TRITON_PYTHON")
    candidate = Path(configured) if configured else REPO_ROOT / ".venv-triton" / "bin" / "python"
    if not candidate.exists():
        return None, (f"no Python with nvidia-pytriton at {candidate} (create it: python3.11 -m venv .venv-triton && "
                      ".venv-triton/bin/pip install nvidia-pytriton onnxruntime; or set SIDECAR_TRITON_PYTHON)")
    probe = subprocess.run([str(candidate), "-c", "import pytriton, onnxruntime"], capture_output=True,
                           text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return None, f"{candidate} cannot import pytriton and onnxruntime: {probe.stderr.strip()[-200:]}"
    return candidate, ""


class TritonStartError(RuntimeError):
    """The pytriton process exited or was not ready in time; the message ends with its log."""


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PytritonServer:
    """One `serve()` process on loopback ports; a context manager that waits until it is ready."""

    def __init__(self, python: Path, onnx_file: Path, *, model_name: str = "lge_qa", input_name: str = "slices",
                 output_name: str = "logits", max_batch_size: int = 16, delay_ms: float = 0.0, threads: int = 1,
                 log_file: Path | None = None, start_timeout_s: float = 90.0, stop_grace_s: float = 3.0) -> None:
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.grpc_port}"
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s  # after SIGTERM, before SIGKILL
        self.log_file = log_file
        self.command = [
            str(python), str(Path(__file__).resolve()), "--onnx", str(onnx_file), "--model-name", model_name,
            "--input-name", input_name, "--output-name", output_name, "--max-batch-size", str(max_batch_size),
            "--delay-ms", str(delay_ms), "--threads", str(threads), "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port),
        ]
        self.model_name = model_name
        self.process: subprocess.Popen[bytes] | None = None
        self._out: BinaryIO | int = subprocess.DEVNULL

    def __enter__(self) -> PytritonServer:
        self._out = open(self.log_file, "wb") if self.log_file else subprocess.DEVNULL  # closed in stop()
        self.process = subprocess.Popen(self.command, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{self.model_name}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise TritonStartError(f"pytriton exited with status {self.process.returncode} before it was "
                                       f"ready{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as rsp:  # loopback only
                    if rsp.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TritonStartError(f"pytriton was not ready within {self.start_timeout_s:.0f} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return ": ..." + self.log_file.read_text(encoding="utf-8", errors="replace")[-300:]

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _signal_group(group: int, sig: int) -> None:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return

    @staticmethod
    def _group_alive(group: int) -> bool:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM this server's own process group (tritonserver and the model stubs); SIGKILL what
        is left after `stop_grace_s` (a test server has nothing to save)."""
        proc = self.process
        if proc is not None:
            group = proc.pid  # start_new_session: the group holds tritonserver and its model stubs
            self._signal_group(group, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace_s
            while self._group_alive(group) and time.monotonic() < deadline:
                proc.poll()  # reap the leader so it does not count as alive
                time.sleep(0.1)
            if self._group_alive(group):
                self._signal_group(group, signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not isinstance(self._out, int):
            self._out.close()


def serve(argv: list[str] | None = None) -> None:
    """Serve an ONNX file on Triton via pytriton (run inside the pytriton Python)."""
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
    from pytriton.triton import Triton, TritonConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True)
    p.add_argument("--model-name", default="lge_qa")
    p.add_argument("--input-name", default="slices")
    p.add_argument("--output-name", default="logits")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--delay-ms", type=float, default=0.0, help="added to every execution (deadline tests)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    args = p.parse_args(argv)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    shape = tuple(int(d) for d in session.get_inputs()[0].shape[1:])

    @batch  # type: ignore[untyped-decorator]  # pytriton ships no type hints
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = inputs[args.input_name].astype(np.float32)
        if args.delay_ms:
            time.sleep(args.delay_ms / 1000.0)
        [out] = session.run([args.output_name], {args.input_name: x})
        return {args.output_name: out.reshape(len(x), -1).astype(np.float32)}

    policy = QueuePolicy(default_timeout_microseconds=5_000_000, allow_timeout_override=True, max_queue_size=256)
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=2000,
        preferred_batch_size=[b for b in (4, 8, 16) if b <= args.max_batch_size],
        priority_levels=2, default_priority_level=2, default_queue_policy=policy,
        priority_queue_policy={1: QueuePolicy(default_timeout_microseconds=500_000, allow_timeout_override=True,
                                              max_queue_size=256), 2: policy},
    )
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=args.grpc_port, http_address="127.0.0.1",
                          http_port=args.http_port, metrics_address="127.0.0.1", metrics_port=args.metrics_port,
                          exit_timeout_secs=2)
    with Triton(config=config) as triton:
        triton.bind(model_name=args.model_name, infer_func=infer,
                    inputs=[Tensor(name=args.input_name, dtype=np.float32, shape=shape)],
                    outputs=[Tensor(name=args.output_name, dtype=np.float32, shape=(1,))],
                    config=ModelConfig(max_batch_size=args.max_batch_size, batcher=batcher))
        triton.serve()


if __name__ == "__main__":
    serve(sys.argv[1:])
