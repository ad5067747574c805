"""Models logged with mlflow.onnx.log_model (or saved with mlflow.onnx.save_model), served by alias from a real local
MLflow registry by a real server: the MLmodel's onnx flavour reaches ONNX Runtime (read back from the sessions the
server made), external data files come with the model, what the server does not apply (providers other than CPU
and CUDA, other session options) is skipped with a warning, and a wrong value the server would use is refused
naming the key or the file. The precedence is lifecycle/onnx_flavor.py's (tests/unit/test_onnx_flavor.py holds
every case).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import onnx_models
from tests.support.mlflow_registry import Registry, mlflow_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mlflow_available(), reason="needs the mlflow extra: pip install -e '.[mlflow]'"),
]

import mlflow.onnx  # noqa: E402  (imports pandas and onnx: the dev extra)
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from inference_server.config.server import parse_server  # noqa: E402
from tests.conftest import ServerThread  # noqa: E402



def model() -> onnx.ModelProto:
    """A new one each time: onnx.save_model(save_as_external_data=True) moves the tensors of the proto it is given
    out to the data file, so a second save of the same proto would write a model.onnx whose data file is missing.
    Its 1 KiB tensors and larger are what mlflow keeps in an external data file."""
    return onnx_models.mlp([4, 64, 2], seed=3)


X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]], np.float32)
EXPECTED = ort.InferenceSession(model().SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": X})[0]
SPIN = "session.intra_op.allow_spinning"  # an ONNX Runtime session config entry
OPTIONS = {"intra_op_num_threads": 2, "inter_op_num_threads": 3, "execution_mode": "parallel",
           "graph_optimization_level": 1, "extra_session_config": {SPIN: "0"}}
CPU_ONLY = ["CPUExecutionProvider"]
ACCELERATED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
LOG = "inference_server.lifecycle.onnx_flavor"


def save(directory: Path, **kwargs: Any) -> dict[str, bytes]:
    """The files mlflow.onnx.save_model writes (MLmodel, model.onnx, its external data file, ...), by path."""
    mlflow.onnx.save_model(model(), str(directory), pip_requirements=["onnxruntime"], **kwargs)
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Served:
    server: ServerThread
    missing_data: str  # the external data file that the version of "missing" lacks
    log: list[str] = field(default_factory=list)  # onnx_flavor's lines while the server loaded its models


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    registry = Registry(tmp_path_factory.mktemp("mlflow"))
    with pytest.MonkeyPatch.context() as env:
        for key, value in registry.env().items():
            env.setenv(key, value)
        env.delenv("MLFLOW_REGISTRY_URI", raising=False)
        # As a user logs a model: the fluent API, the run's logged model registered as a version.
        with mlflow.start_run(experiment_id=registry.experiment_id):
            mlflow.onnx.log_model(model(), name="model", registered_model_name="tuned",
                                  pip_requirements=["onnxruntime"], onnx_execution_providers=CPU_ONLY,
                                  onnx_session_options=OPTIONS)
        registry.set_alias("tuned", "prod", "1")
        registry.register("plain", None, alias="prod", extra_files=save(tmp_path_factory.mktemp("plain")))
        # A config.toml beside model.onnx: what it sets wins, the MLmodel fills in the rest.
        files = save(tmp_path_factory.mktemp("configured"), onnx_execution_providers=CPU_ONLY,
                     onnx_session_options=OPTIONS)
        files["config.toml"] = b'intra_op_threads = 1\ngraph_optimization_level = "disable"\n'
        registry.register("configured", None, alias="prod", extra_files=files)
        files = save(tmp_path_factory.mktemp("missing"))
        data = [name for name in files if name.endswith(".data")]
        assert len(data) == 1, files  # the model keeps its tensors in one external data file ...
        del files[data[0]]  # ... which this version lacks
        registry.register("missing", None, alias="prod", extra_files=files)
        # TensorRT first (common for GPU models) and a SessionOptions attribute that mlflow accepts but neither its
        # loader nor this server applies: both skipped, the version serves.
        registry.register("accelerated", None, alias="prod", extra_files=save(
            tmp_path_factory.mktemp("accelerated"), onnx_execution_providers=ACCELERATED,
            onnx_session_options={"enable_cpu_mem_arena": False, "execution_mode": "parallel"}))
        # A negative inter_op_num_threads, which mlflow's validation lets through: refused, unless the config
        # beside the model sets inter_op_threads itself.
        wrong = {"inter_op_num_threads": -1, "execution_mode": "parallel"}
        registry.register("wrong", None, alias="prod", extra_files=save(
            tmp_path_factory.mktemp("wrong"), onnx_session_options=wrong))
        files = save(tmp_path_factory.mktemp("overridden"), onnx_session_options=wrong)
        files["config.toml"] = b"inter_op_threads = 2\n"  # 1 would make ONNX Runtime run sequentially
        registry.register("overridden", None, alias="prod", extra_files=files)
        cache = tmp_path_factory.mktemp("cache")
        names = ("tuned", "plain", "configured", "missing", "accelerated", "wrong", "overridden")
        models = [{"name": n, "source": f"models:/{n}@prod", "poll_interval_s": 0} for n in names]
        cfg = parse_server({"server": {"port": 0, "metrics_port": 0, "http_port": 0, "drain_grace_s": 5,
                                       "model_cache_dir": str(cache)}, "models": models})
        handler, logger = Lines(), logging.getLogger(LOG)
        logger.addHandler(handler)
        level, logger.level = logger.level, logging.INFO
        try:
            running = ServerThread(cfg).start()
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        try:
            yield Served(running, data[0], handler.lines)
        finally:
            running.stop()


@pytest.fixture
def server(served: Served) -> ServerThread:
    return served.server


@pytest.fixture
def client(server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.url) as c:
        yield c


def answer(client: grpcclient.InferenceServerClient, name: str) -> np.ndarray:
    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return client.infer(name, [x]).as_numpy("y")


def session_options(server: ServerThread, name: str) -> list[Any]:
    """The options ONNX Runtime holds for each of the serving version's sessions (not the server's config)."""
    assert server.app is not None
    return [i.session.get_session_options() for i in server.app.registry.find(name).backend.instances]


def reason(client: grpcclient.InferenceServerClient, name: str) -> tuple[str, str]:
    (row,) = [r for r in client.get_model_repository_index(as_json=True)["models"] if r["name"] == name]
    return row.get("state", ""), row.get("reason", "")


def test_the_flavours_session_options_reach_onnx_runtime_and_external_data_loads(
        server: ServerThread, client: grpcclient.InferenceServerClient) -> None:
    np.testing.assert_allclose(answer(client, "tuned"), EXPECTED, rtol=1e-5, atol=1e-6)
    cached = Path(server.cfg.model_cache_dir, "mlflow", "tuned", "1")
    assert len(list(cached.rglob("*.data"))) == 1  # downloaded with the model, beside model.onnx
    for options in session_options(server, "tuned"):
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
        assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert options.get_session_config_entry(SPIN) == "0"
    assert server.app is not None and server.app.registry.find("tuned").config.device == "cpu"  # providers [CPU]


def test_mlflows_defaults_change_nothing(server: ServerThread, client: grpcclient.InferenceServerClient) -> None:
    """providers [CUDA, CPU] (mlflow's default) is the server's usual device choice; no session options: ours."""
    np.testing.assert_allclose(answer(client, "plain"), EXPECTED, rtol=1e-5, atol=1e-6)
    assert server.app is not None and server.app.registry.find("plain").config.device == "auto"
    for options in session_options(server, "plain"):
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_a_config_beside_the_model_wins_and_the_mlmodel_fills_in_the_rest(
        server: ServerThread, client: grpcclient.InferenceServerClient) -> None:
    np.testing.assert_allclose(answer(client, "configured"), EXPECTED, rtol=1e-5, atol=1e-6)
    for options in session_options(server, "configured"):
        assert options.intra_op_num_threads == 1  # config.toml's, not the MLmodel's 2
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # config.toml's
        assert options.inter_op_num_threads == 3 and options.execution_mode == ort.ExecutionMode.ORT_PARALLEL


def test_a_version_without_its_external_data_file_is_refused_naming_it(
        served: Served, client: grpcclient.InferenceServerClient) -> None:
    state, why = reason(client, "missing")
    assert state == "UNAVAILABLE"
    assert f"model.onnx keeps tensors in external data files that are not beside it: {served.missing_data}" in why


def test_providers_and_options_the_server_does_not_apply_are_skipped_with_one_warning(
        served: Served, client: grpcclient.InferenceServerClient) -> None:
    np.testing.assert_allclose(answer(client, "accelerated"), EXPECTED, rtol=1e-5, atol=1e-6)
    server = served.server
    assert server.app is not None and server.app.registry.find("accelerated").config.device == "auto"  # CUDA's
    for options in session_options(server, "accelerated"):
        assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL  # what it does apply still reaches ORT
        assert options.enable_cpu_mem_arena  # skipped: ONNX Runtime's default
    warnings = [line for line in served.log if line.startswith("model 'accelerated' version 1: MLmodel flavors.onnx: "
                                                                "skipped")]
    assert warnings == ["model 'accelerated' version 1: MLmodel flavors.onnx: skipped, not applied by this server: "
                        "providers TensorrtExecutionProvider; onnx_session_options.enable_cpu_mem_arena"], served.log


def test_a_wrong_value_is_refused_naming_the_key_unless_the_config_beside_the_model_sets_it(
        server: ServerThread, client: grpcclient.InferenceServerClient) -> None:
    state, why = reason(client, "wrong")
    assert state == "UNAVAILABLE"
    assert "MLmodel flavors.onnx.onnx_session_options.inter_op_num_threads" in why and "got -1" in why
    assert "set inter_op_threads in the model's config" in why
    np.testing.assert_allclose(answer(client, "overridden"), EXPECTED, rtol=1e-5, atol=1e-6)
    for options in session_options(server, "overridden"):
        assert options.inter_op_num_threads == 2  # config.toml's
        assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL  # the MLmodel's
    np.testing.assert_allclose(answer(client, "tuned"), EXPECTED, rtol=1e-5, atol=1e-6)  # the others serve on


def test_the_load_log_says_where_each_setting_came_from(served: Served) -> None:
    tuned, configured = ([line for line in served.log if line.startswith(f"model '{n}' version 1: session settings: ")]
                         for n in ("tuned", "configured"))
    assert len(tuned) == 1 and len(configured) == 1, served.log  # one line per load
    assert "device=cpu from MLmodel providers" in tuned[0]
    assert "intra_op_threads=2 from MLmodel onnx_session_options.intra_op_num_threads" in tuned[0]
    assert f"session_config={{{SPIN}=0}} from MLmodel onnx_session_options.extra_session_config" in tuned[0]
    assert ("intra_op_threads=1 from its config (MLmodel onnx_session_options.intra_op_num_threads: 2)"
            in configured[0])
    assert "execution_mode=parallel from MLmodel onnx_session_options.execution_mode" in configured[0]
