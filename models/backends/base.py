"""The seam between a model's prepare/predict and its network forward.

A clinical model keeps pre- and post-processing in `models/<id>/` (the code training uses); only
the forward pass of each of its networks — float32 tensors in, float32 tensors out — is handed to
a `TensorBackend`. So every backend sees exactly the same tensors, and a model adopts the seam by
offering `tensor_signatures()` and `use_backend()` (`SwappableForward`).

Most forwards take one tensor and give one (`TensorBackend.run`). Two do not fit that: the
elastography generator gives its image and, when the checkpoint has the head, five Tsukuba
logits; the hand-joints grader takes a crop and the joint's index (int64: it selects a learned
embedding) and gives SHS and KL logits. A `TensorSignature` therefore names extra inputs and
outputs (`TensorSpec`) beside the first ones, and `TensorBackend.run_named` takes and gives
tensors by name. A model of several networks (hand_joints: detector and grader) gives one
signature per network, told apart by `network`, and gets one backend per network.

Errors (one tree)::

    BackendError
    ├── BackendUnavailable   the backend cannot be opened: optional install missing, model file
    │                        missing or of another version, signature mismatch (the model is
    │                        then unavailable, as with bad weights)
    └── InferenceFailed      one forward failed: endpoints down, deadline spent, server error
                             (the job fails with this reason)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np


class BackendError(Exception):
    """Root of the backend errors."""


class BackendUnavailable(BackendError):
    """A backend cannot be opened; the message says why and, for an optional install, what to install."""


class InferenceFailed(BackendError):
    """One forward pass failed; the message is the job's failure reason."""


TensorDType = Literal["float32", "int64"]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a forward, per item (without the batch axis).

    float32 for every image, feature and logit; int64 only for an index a network looks up
    (the hand-joints grader's joint identity).
    """

    name: str
    shape: tuple[int, ...] = ()
    dtype: TensorDType = "float32"

    @property
    def numpy_dtype(self) -> type[np.generic]:
        return np.float32 if self.dtype == "float32" else np.int64


@dataclass(frozen=True)
class TensorSignature:
    """What one network's forward takes and gives, without the batch axis.

    The first input and output are float32 (`input_name`, `output_name`); `extra_inputs` and
    `extra_outputs` follow them in the forward's argument and result order. `network` names the
    network within its model ("" for a model's only network). `version` is the model card's
    version: a model file or server model exported from other weights must not answer under
    this version (result UIDs and the exactly-once key carry it).
    """

    model_name: str
    version: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...] = ()
    extra_inputs: tuple[TensorSpec, ...] = ()
    extra_outputs: tuple[TensorSpec, ...] = ()
    network: str = ""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Every input, in the forward's argument order."""
        return (TensorSpec(self.input_name, self.input_shape), *self.extra_inputs)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Every output, in the forward's result order."""
        return (TensorSpec(self.output_name, self.output_shape), *self.extra_outputs)

    @property
    def single_tensor(self) -> bool:
        """One tensor in, one out: what `TensorBackend.run` serves."""
        return not self.extra_inputs and not self.extra_outputs

    @property
    def served_name(self) -> str:
        """The name in a Triton repository and the exported file's stem: the model id, or
        ``<model>_<network>`` for one network of several."""
        return f"{self.model_name}_{self.network}" if self.network else self.model_name

    @property
    def label(self) -> str:
        """The model and network as messages name them ("hand_joints grader")."""
        return f"{self.model_name} {self.network}" if self.network else self.model_name


@runtime_checkable
class TensorBackend(Protocol):
    """Runs a model's network forward: (N, *input_shape) float32 -> (N, *output_shape) float32."""

    name: str

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """One forward pass of a one-in, one-out signature; raises `InferenceFailed` with a reason
        a person can act on."""
        ...

    def run_named(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass with every input by name; gives every output by name."""
        ...

    def close(self) -> None:
        """Release sessions, connections and threads."""
        ...


@runtime_checkable
class SwappableForward(Protocol):
    """A model whose network forwards can be served by a backend other than its own torch modules."""

    def tensor_signatures(self) -> tuple[TensorSignature, ...]:
        """Names and shapes of each network's inputs and outputs (one signature per network)."""
        ...

    def use_backend(self, backend: TensorBackend, network: str = "") -> None:
        """Send every later forward pass of `network` ("" for the model's only one) to `backend`."""
        ...


@dataclass(frozen=True)
class InProcessConfig:
    """The model's own torch module in this process (the default)."""

    kind: Literal["inprocess"] = "inprocess"


@dataclass(frozen=True)
class OnnxNetworkFile:
    """The exported ONNX file of one network of a model that has several."""

    network: str
    model_file: Path
    sha256: str | None = None


@dataclass(frozen=True)
class OnnxRuntimeConfig:
    """An exported ONNX file run by onnxruntime in this process (the bundled models' default).

    A model of one network names its file in `model_file`; a model of several (hand_joints)
    names one file per network in `networks` instead (an ONNX Runtime session must be fed every
    input of its graph, so networks run at different steps cannot share one file).
    """

    model_file: Path | None = None
    sha256: str | None = None
    threads: int = 0  # intra-op threads; 0: onnxruntime's default
    networks: tuple[OnnxNetworkFile, ...] = ()
    kind: Literal["onnxruntime"] = "onnxruntime"

    @staticmethod
    def of_file(path: Path, signature: TensorSignature, threads: int = 0) -> OnnxRuntimeConfig:
        """The configuration that runs `path` as `signature`'s network (of one model or of several)."""
        if not signature.network:
            return OnnxRuntimeConfig(model_file=path, threads=threads)
        return OnnxRuntimeConfig(threads=threads, networks=(OnnxNetworkFile(signature.network, path),))

    def for_network(self, signature: TensorSignature) -> OnnxRuntimeConfig:
        """The one-file configuration of `signature`'s network, or `BackendUnavailable` saying
        which file is missing from the configuration."""
        if not signature.network:
            if self.model_file is None:
                raise BackendUnavailable(f"{signature.model_name} has one network: name its file in model_file")
            return self
        for entry in self.networks:
            if entry.network == signature.network:
                return OnnxRuntimeConfig(model_file=entry.model_file, sha256=entry.sha256, threads=self.threads)
        named = ", ".join(e.network for e in self.networks) or "none"
        raise BackendUnavailable(f"no ONNX file for the {signature.label} network: networks "
                                 f"names {named} (one file per network; model_file is for a model of one)")


@dataclass(frozen=True)
class TritonConfig:
    """A model on one or more Triton servers over gRPC (`pip install .[triton]`).

    `deadline_ms` bounds one forward pass including its one retry on another endpoint;
    `priority` is Triton's priority level (1 is the highest; exported configs have two levels,
    default 2), so streaming alerts jump the dynamic batcher's queue.
    """

    endpoints: tuple[str, ...]
    model_name: str | None = None  # default: the signature's model name
    model_version: str = ""  # Triton model version; "" lets the server's policy choose
    deadline_ms: float = 500.0
    priority: int = 1
    max_batch_size: int = 16  # larger batches are split into requests of at most this many
    input_name: str | None = None  # default: the signature's (a TorchScript export uses "<name>__0")
    output_name: str | None = None
    cooldown_s: float = 5.0  # an endpoint that failed is tried last for this long
    kind: Literal["triton"] = "triton"

    def for_network(self, signature: TensorSignature) -> TritonConfig:
        """The configuration of `signature`'s network: a configured `model_name` gets the
        network's suffix (``<name>_<network>``), as the export names its Triton models."""
        if signature.network and self.model_name:
            return replace(self, model_name=f"{self.model_name}_{signature.network}")
        return self


BackendConfig = InProcessConfig | OnnxRuntimeConfig | TritonConfig


def as_output(array: np.ndarray, signature: TensorSignature, n: int, spec: TensorSpec | None = None) -> np.ndarray:
    """`array` as (n, *shape) float32 of `spec` (default: the first output), or `InferenceFailed`
    naming the shape it had."""
    spec = spec or signature.outputs[0]
    out = np.array(array, dtype=np.float32)  # a writable copy: gRPC answers are read-only buffers
    want = (n, *spec.shape)
    if out.size != int(np.prod(want)):
        raise InferenceFailed(f"{signature.label}: backend answered {spec.name} of shape {out.shape}, expected {want}")
    return out.reshape(want)


def as_inputs(inputs: Mapping[str, np.ndarray], signature: TensorSignature) -> dict[str, np.ndarray]:
    """Every input of `signature`, contiguous and of its dtype, one batch size for all; or
    `InferenceFailed` naming what is missing, unexpected or of another batch size."""
    names = [spec.name for spec in signature.inputs]
    if set(inputs) != set(names):
        raise InferenceFailed(f"{signature.label}: forward takes {names}, was given {sorted(inputs)}")
    out = {spec.name: np.ascontiguousarray(inputs[spec.name], dtype=spec.numpy_dtype) for spec in signature.inputs}
    sizes = {len(x) for x in out.values()}
    if len(sizes) != 1:
        raise InferenceFailed(f"{signature.label}: inputs of different batch sizes {sorted(sizes)}")
    return out



def one_network(model_name: str, network: str) -> None:
    """`BackendUnavailable` when a network name is given to a model of one network."""
    if network:
        raise BackendUnavailable(f"{model_name} has one network; there is no {network!r} network to serve")
