"""Classify many digits concurrently with tritonclient.grpc.aio; the server batches them.

    python clients/python/infer_aio.py [--url 127.0.0.1:8001] [--requests 64]

Needs `pip install 'tritonclient[grpc]'` and a running server (./scripts/serve).
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import tritonclient.grpc.aio as aioclient
from infer_sync import DIGIT


async def classify(client: aioclient.InferenceServerClient, image: np.ndarray, request_id: str) -> int:
    pixels = aioclient.InferInput("pixels", [1, 64], "FP32")
    pixels.set_data_from_numpy(image.reshape(1, 64).astype(np.float32))
    result = await client.infer("digits", [pixels], request_id=request_id, client_timeout=10)
    return int(result.as_numpy("label")[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # The same digit with a little noise each time, so every request is distinct.
    images = [np.clip(DIGIT + rng.normal(0, 0.5, DIGIT.shape), 0, 16) for _ in range(args.requests)]
    async with aioclient.InferenceServerClient(args.url) as client:
        labels = await asyncio.gather(*(classify(client, im, f"aio-{i}") for i, im in enumerate(images)))
    print(f"{len(labels)} requests; labels: {sorted(set(labels))}; label 2 for {labels.count(2)} of them")


if __name__ == "__main__":
    asyncio.run(main())
