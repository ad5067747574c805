"""MlflowSource against a real local MLflow registry (sqlite:/// + file:// artifacts) with small real ONNX models.

The unreachable-registry tests set MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 and a small MLFLOW_HTTP_REQUEST_TIMEOUT so
they fail fast; the server itself leaves MLflow's own retry and timeout settings to the user (MLflow's default
retries an unreachable http registry with backoff for minutes).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from tests.support import onnx_models
from tests.support.mlflow_registry import Registry, mlflow_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mlflow_available(), reason="needs the mlflow extra: pip install -e '.[mlflow]'"),
]

from inference_server.lifecycle.mlflow_source import Fetched, MlflowSource, SourceError  # noqa: E402

ONNX_1 = onnx_models.mlp([4, 8, 2], seed=1).SerializeToString()
ONNX_2 = onnx_models.mlp([4, 8, 2], seed=2).SerializeToString()
CONFIG = b"[batching]\nmax_batch_size = 8\n"
# An MLmodel as mlflow.sklearn would write it: python_function + sklearn flavours and a pickle. These bytes are
# only written to disk, never unpickled.
PYFUNC_MLMODEL = b"""artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
    python_version: 3.11.7
  sklearn:
    pickled_model: model.pkl
    serialization_format: cloudpickle
mlflow_version: 3.17.2
"""
ONNX_MLMODEL = b"""flavors:
  onnx:
    data: nested/chosen.onnx
    onnx_version: 1.16.0
  python_function:
    loader_module: mlflow.onnx
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("mlflow"))
    reg.register("mlp", ONNX_1, extra_files={"config.toml": CONFIG}, alias="prod")  # version 1
    reg.register("mlp", ONNX_2)  # version 2
    reg.register("pyfunc", None, extra_files={"MLmodel": PYFUNC_MLMODEL, "model.pkl": b"\x80\x05not a pickle."})
    reg.register("several", ONNX_1, extra_files={"sub/other.onnx": ONNX_2})
    reg.register("flavoured", None, extra_files={"MLmodel": ONNX_MLMODEL, "nested/chosen.onnx": ONNX_1,
                                                 "stray.onnx": ONNX_2, "nested/config.pbtxt": b'name: "x"\n'})
    reg.register("escape", ONNX_1, extra_files={"MLmodel": b"flavors:\n  onnx:\n    data: ../../../../x.onnx\n"})
    reg.register("ambiguous", ONNX_1, extra_files={"config.toml": CONFIG, "config.pbtxt": b'name: "x"\n'})
    return reg


@pytest.fixture(autouse=True)
def registry_env(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in registry.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_alias_resolves_and_follows_a_move(registry: Registry, tmp_path: Path) -> None:
    registry.register("moving", ONNX_1, alias="champion")
    second = registry.register("moving", ONNX_2)
    source = MlflowSource("models:/moving@champion", tmp_path)
    assert source.name == "moving"
    assert source.resolve() == "1"
    registry.set_alias("moving", "champion", second)
    assert source.resolve() == second == "2"
    registry.delete_alias("moving", "champion")
    with pytest.raises(SourceError, match="alias 'champion' of model 'moving' not found"):
        source.resolve()


def test_version_number_and_stage(registry: Registry, tmp_path: Path) -> None:
    assert MlflowSource("models:/mlp/2", tmp_path).resolve() == "2"
    with pytest.raises(SourceError, match="version 9 of model 'mlp' not found"):
        MlflowSource("models:/mlp/9", tmp_path).resolve()
    with pytest.warns(FutureWarning):  # MLflow deprecates stages
        registry.transition_stage("mlp", "2", "Production")
        assert MlflowSource("models:/mlp/Production", tmp_path).resolve() == "2"
        assert MlflowSource("models:/mlp/latest", tmp_path).resolve() == "2"
        with pytest.raises(SourceError, match="no version in stage 'Staging'"):
            MlflowSource("models:/mlp/Staging", tmp_path).resolve()
    with pytest.raises(SourceError, match="'Champion' is not a version number, an MLflow stage"):
        MlflowSource("models:/mlp/Champion", tmp_path).resolve()


def test_fetch_finds_the_onnx_and_its_config_and_reuses_the_cache(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    source = MlflowSource("models:/mlp@prod", tmp_path)
    fetched = source.fetch(source.resolve())
    assert fetched == Fetched("1", tmp_path / "mlp" / "1", tmp_path / "mlp" / "1" / "model.onnx",
                              tmp_path / "mlp" / "1" / "config.toml")
    assert fetched.model_file.read_bytes() == ONNX_1 and fetched.config_file.read_bytes() == CONFIG
    assert [p.name for p in (tmp_path / "mlp").iterdir()] == ["1"]  # no partial download left behind
    inode = fetched.model_file.stat().st_ino
    # A complete copy is reused without asking the registry (which is unreachable here).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    offline = MlflowSource("models:/mlp@prod", tmp_path)
    assert offline.fetch("1") == fetched and fetched.model_file.stat().st_ino == inode
    with pytest.raises(SourceError, match="is unreachable"):
        offline.fetch("2")


def test_a_half_download_is_never_reused(tmp_path: Path) -> None:
    partial = tmp_path / "mlp" / ".2.partial-crashed"
    partial.mkdir(parents=True)
    (partial / "model.onnx").write_bytes(b"truncated")
    fetched = MlflowSource("models:/mlp/2", tmp_path).fetch("2")
    assert fetched.model_file.read_bytes() == ONNX_2 and fetched.config_file is None


def test_mlmodel_onnx_flavour_chooses_the_file(tmp_path: Path) -> None:
    fetched = MlflowSource("models:/flavoured/1", tmp_path).fetch("1")
    assert fetched.model_file == tmp_path / "flavoured" / "1" / "nested" / "chosen.onnx"
    assert fetched.config_file == tmp_path / "flavoured" / "1" / "nested" / "config.pbtxt"
    with pytest.raises(SourceError, match="names x.onnx, which is not in the model's artifacts"):
        MlflowSource("models:/escape/1", tmp_path).fetch("1")


def test_refuses_a_pickled_pyfunc_model(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        MlflowSource("models:/pyfunc/1", tmp_path).fetch("1")
    message = str(info.value)
    assert "version 1 of model 'pyfunc' has no ONNX file" in message
    assert "python_function, sklearn" in message and "serves only ONNX models" in message
    assert "never loads a model of another flavour" in message and "mlflow.log_artifact" in message
    assert "skops" in message  # MLflow 3 saves sklearn models as skops by default: not every one is a pickle
    assert "python -m inference_server.convert models:/pyfunc/1 --register NAME" in message  # the way forward
    assert not (tmp_path / "pyfunc" / "1").exists()  # not cached either


def test_refuses_several_onnx_files_and_two_configs(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"several \.onnx files .*: model\.onnx, sub/other\.onnx"):
        MlflowSource("models:/several/1", tmp_path).fetch("1")
    with pytest.raises(SourceError, match="ambiguous: it has both config.toml and config.pbtxt"):
        MlflowSource("models:/ambiguous/1", tmp_path).fetch("1")


def test_unknown_model_and_alias_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="alias 'prod' of model 'nosuch' not found in the MLflow registry at sqlite"):
        MlflowSource("models:/nosuch@prod", tmp_path).resolve()
    with pytest.raises(SourceError, match="alias 'nope' of model 'mlp' not found"):
        MlflowSource("models:/mlp@nope", tmp_path).resolve()
    with pytest.raises(SourceError, match="version 7 of model 'mlp' not found"):
        MlflowSource("models:/mlp/1", tmp_path).fetch("7")
    with pytest.raises(SourceError, match="must be an MLflow model URI"):
        MlflowSource("runs:/abc/model", tmp_path)


def test_unreachable_registry_fails_fast_without_leaking_the_password(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-pw@127.0.0.1:{port}/prefix")
    started = time.monotonic()
    with pytest.raises(SourceError) as info:
        MlflowSource("models:/mlp@prod", tmp_path).resolve()
    assert time.monotonic() - started < 10
    text = "".join(traceback.format_exception(info.value))
    assert f"MLflow registry at http://127.0.0.1:{port}/prefix is unreachable" in str(info.value)
    assert "s3cret" not in text and "alice" not in text


def test_needs_a_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(SourceError, match="set MLFLOW_TRACKING_URI"):
        MlflowSource("models:/mlp@prod", tmp_path)


def test_without_mlflow_the_module_imports_and_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from inference_server.lifecycle.mlflow_source import MlflowSource, SourceError\n"
        "try:\n    MlflowSource('models:/m@prod', '/nonexistent')\n"
        "except SourceError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert "install the mlflow extra: pip install 'inference_server[mlflow]'" in done.stdout
