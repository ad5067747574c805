"""Classify a digit over HTTP/REST with tritonclient.http (the KServe v2 REST API, binary tensors).

    python clients/python/infer_http.py [--url 127.0.0.1:8000] [--json]

Needs `pip install 'tritonclient[http]'` and a running server (./scripts/serve). --json sends and receives
the tensors as JSON instead of Triton's binary tensor extension.
"""

from __future__ import annotations

import argparse

import tritonclient.http as httpclient
from infer_sync import DIGIT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000")
    parser.add_argument("--json", action="store_true", help="JSON tensors instead of binary ones")
    args = parser.parse_args()
    binary = not args.json
    with httpclient.InferenceServerClient(args.url) as client:
        print("server ready:", client.is_server_ready())
        meta = client.get_model_metadata("digits")
        print("inputs:", [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]])
        pixels = httpclient.InferInput("pixels", [1, 64], "FP32")
        pixels.set_data_from_numpy(DIGIT.reshape(1, 64), binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
        result = client.infer("digits", [pixels], outputs=outputs, request_id="http-1")
        probabilities = result.as_numpy("probabilities")[0]
        print(f"label: {int(result.as_numpy('label')[0])} (p={probabilities.max():.2f})")


if __name__ == "__main__":
    main()
