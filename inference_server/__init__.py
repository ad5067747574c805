"""inference_server: an async, micro-batching KServe v2 / Triton gRPC inference server."""

__version__ = "0.1.0"
