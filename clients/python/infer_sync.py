"""Classify a digit with the blocking tritonclient.grpc client.

    python clients/python/infer_sync.py [--url 127.0.0.1:8001]

Needs `pip install 'tritonclient[grpc]'` and a running server (./scripts/serve).
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as grpcclient

# An 8x8 image of a handwritten "2" (pixel values 0-16), from scikit-learn's digits data.
DIGIT = np.array([
    [0, 0, 7, 16, 14, 3, 0, 0],
    [0, 0, 9, 14, 11, 15, 0, 0],
    [0, 0, 1, 5, 0, 15, 5, 0],
    [0, 0, 0, 0, 0, 16, 5, 0],
    [0, 0, 0, 0, 3, 16, 4, 0],
    [0, 0, 0, 1, 12, 14, 1, 0],
    [0, 0, 5, 12, 16, 16, 14, 1],
    [0, 0, 8, 16, 14, 10, 13, 3],
], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    args = parser.parse_args()
    with grpcclient.InferenceServerClient(args.url) as client:
        print("server ready:", client.is_server_ready())
        meta = client.get_model_metadata("digits", as_json=True)
        print("inputs:", [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]])
        pixels = grpcclient.InferInput("pixels", [1, 64], "FP32")
        pixels.set_data_from_numpy(DIGIT.reshape(1, 64))
        result = client.infer("digits", [pixels], request_id="sync-1", client_timeout=10)
        probabilities = result.as_numpy("probabilities")[0]
        print(f"label: {int(result.as_numpy('label')[0])} (p={probabilities.max():.2f})")


if __name__ == "__main__":
    main()
