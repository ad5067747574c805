"""Serve one ONNX model through NVIDIA PyTriton (Triton Inference Server) with Triton's dynamic batcher.

Runs inside benchmarks/.work/venvs/pytriton (nvidia-pytriton, onnxruntime, numpy): imports nothing else.
The model runs as a Python callable calling ONNX Runtime; dim 0 of every input and output is the batch.

    python pytriton_serve.py MODEL.onnx NAME --max-batch-size 64 --max-queue-delay-us 0 \
        --grpc-port P --http-port P --metrics-port P
"""

from __future__ import annotations

import argparse
import logging
import signal

import numpy as np
import onnxruntime
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

ONNX_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def tensors(args: list) -> list[Tensor]:
    """Triton tensor specs from ORT NodeArgs: dim 0 (the batch) left out, symbolic dims as -1."""
    return [Tensor(name=a.name, dtype=ONNX_TO_NUMPY[a.type],
                   shape=tuple(d if isinstance(d, int) else -1 for d in a.shape[1:])) for a in args]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_path")
    parser.add_argument("model_name")
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--max-queue-delay-us", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    session = onnxruntime.InferenceSession(args.model_path, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(output_names, inputs), strict=True))

    def stop(*_: object) -> None:
        raise KeyboardInterrupt  # Triton.serve() stops tritonserver and its stubs on KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=args.grpc_port, http_address="127.0.0.1",
                          http_port=args.http_port, metrics_address="127.0.0.1", metrics_port=args.metrics_port)
    # No access token: statistics (for the mean batch size) stay open to the benchmark's client.
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(model_name=args.model_name, infer_func=infer, inputs=tensors(session.get_inputs()),
                    outputs=tensors(session.get_outputs()),
                    config=ModelConfig(max_batch_size=args.max_batch_size,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)))
        triton.serve()


if __name__ == "__main__":
    main()
