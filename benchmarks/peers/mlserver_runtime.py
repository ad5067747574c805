"""An MLServer custom runtime that runs one ONNX model with ONNX Runtime (MLServer 1.7.1 ships none).

Runs inside benchmarks/.work/venvs/mlserver (mlserver, onnxruntime, numpy): imports nothing else. With
adaptive batching on, `predict` receives the batch MLServer formed (inputs concatenated along dim 0); it
logs the rows of each batch as the custom metric `peer_batch_rows` (a histogram on the metrics port), so
the benchmark can read the mean batch size.
"""

from __future__ import annotations

import contextlib

import mlserver
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

BATCH_METRIC = "peer_batch_rows"


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        self._session = onnxruntime.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        mlserver.register(BATCH_METRIC, "rows per predict call: the batch MLServer's adaptive batcher formed")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        try:
            outputs = self._session.run(self._output_names, feeds)
        except Exception as e:  # ORT's errors (wrong shape, type...) as an MLServer error, not a crash
            raise MLServerError(f"onnxruntime: {e}") from e
        if feeds:
            with contextlib.suppress(Exception):  # metrics are best effort (no model context, metrics off)
                mlserver.log(**{BATCH_METRIC: len(next(iter(feeds.values())))})
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._output_names, outputs,
                                                                                   strict=True)])
