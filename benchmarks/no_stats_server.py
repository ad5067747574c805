"""The server with statistics recording switched off (no-op ModelStats methods) and no metrics endpoint:
the baseline of the `metrics` scenario, which prices what recording costs on the hot path."""

import sys

from inference_server import app
from inference_server.observability.stats import ModelStats

ModelStats.record_batch = lambda self, *args: None  # type: ignore[method-assign]
ModelStats.record_request = lambda self, *args: None  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(app.main([*sys.argv[1:], "--no-metrics"]))
