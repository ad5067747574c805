"""What the tests and the benchmarks share: ONNX model builders, datatype samples, an MLflow registry, a Redis
server and the inference server as subprocesses."""
