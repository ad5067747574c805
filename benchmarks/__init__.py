"""Benchmarks: bounded load against a real server process, compared with in-process ONNX Runtime."""
