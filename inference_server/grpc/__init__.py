"""The protocol layer: the only package that imports grpc or the generated stubs."""
