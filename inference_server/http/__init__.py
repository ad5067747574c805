"""The HTTP/REST front end (KServe v2 + Triton's extensions): uvicorn and Starlette in the gRPC server's event loop.

Like grpc/, it reaches the core only through InferenceService and its views; codec.py is the pure JSON/binary
codec, server.py the routes and the embedded uvicorn server.
"""
