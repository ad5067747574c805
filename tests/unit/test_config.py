"""Config: TOML + flags, defaults, and errors that name the key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inference_server.config.cli import load_config
from inference_server.config.server import DEFAULT_REPOSITORY, BatchingConfig, parse_server
from inference_server.errors import ConfigError, ModelLoadError
from inference_server.lifecycle.manager import ModelManager
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.lifecycle.repository import Repository
from inference_server.protocol.triton_config import pbtxt_to_dict


def repository(cfg) -> Repository:
    return Repository(cfg.model_repository, cfg, pbtxt_to_dict, cfg.model_name)


def manager(cfg, tmp_path: Path) -> ModelManager:
    return ModelManager(cfg, ModelRegistry(), read_pbtxt=pbtxt_to_dict, cache_dir=tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_serve_the_embedded_model_on_port_8001(tmp_path):
    cfg = load_config([], {})
    assert (cfg.host, cfg.port, cfg.max_message_bytes) == ("127.0.0.1", 8001, 2**31 - 1)
    assert (cfg.model_control_mode, cfg.strict_readiness, cfg.exit_on_error) == ("none", True, False)
    assert manager(cfg, tmp_path).known() == ["digits"]
    spec = Repository(DEFAULT_REPOSITORY, cfg, pbtxt_to_dict).read("digits")
    (version,) = spec.selected().values()
    assert version.version == "1"
    assert version.path == DEFAULT_REPOSITORY / "digits" / "1" / "model.onnx" and version.path.is_file()


def test_toml_file_then_flags_override_it(tmp_path):
    cfg_file = write(tmp_path / "server.toml", """
[server]
port = 9000
host = "0.0.0.0"
drain_grace_s = 5
[batching]
max_batch_size = 16
max_queue_delay_us = 250
[[models]]
name = "a"
path = "a.onnx"
[models.batching]
max_queue_delay_us = 1000
preferred_batch_size = [8, 4]
""")
    cfg = load_config(["--config", str(cfg_file), "--port", "9100", "--max-queue-size", "64"], {})
    assert (cfg.host, cfg.port, cfg.drain_grace_s) == ("0.0.0.0", 9100, 5.0)
    assert cfg.batching == BatchingConfig(max_batch_size=16, max_queue_delay_us=250, max_queue_size=64)
    (model,) = cfg.models
    # The model's own keys win; the rest come from the server-wide batching defaults.
    assert model.batching == BatchingConfig(max_batch_size=16, max_queue_delay_us=1000, max_queue_size=64,
                                            preferred_batch_size=(4, 8))


def test_execution_and_workers_from_file_and_flags(tmp_path):
    cfg_file = write(tmp_path / "s.toml", """
[server]
execution = "thread"
workers = 2
[[models]]
name = "a"
path = "a.onnx"
execution = "inline"
[[models]]
name = "b"
path = "b.onnx"
""")
    cfg = load_config(["--config", str(cfg_file)], {})
    assert (cfg.execution, cfg.workers) == ("thread", 2)
    assert [m.execution for m in cfg.models] == ["inline", "thread"]  # a model's own key wins
    cfg = load_config(["--config", str(cfg_file), "--workers", "3", "--execution", "auto"], {})
    assert (cfg.execution, cfg.workers) == ("auto", 3)


def test_cache_from_the_flag_and_a_model_turning_it_off(tmp_path):
    from inference_server.config.server import cache_size_bytes

    cfg_file = write(tmp_path / "s.toml", '[[models]]\nname = "a"\npath = "a.onnx"\ncache = false\n'
                                          '[[models]]\nname = "b"\npath = "b.onnx"\ncache_ttl_s = 30\n')
    cfg = load_config(["--config", str(cfg_file), "--cache", "memory:64"], {})
    assert cfg.cache == "memory:64" and cache_size_bytes(cfg.cache) == 64 << 20
    assert cache_size_bytes("memory") == 256 << 20 and load_config([], {}).cache == ""
    assert [(m.cache, m.cache_ttl_s) for m in cfg.models] == [(False, None), (True, 30.0)]  # None: [cache] ttl_s


def test_cache_tuning_table_and_its_defaults(tmp_path):
    assert load_config([], {}).cache_config.ttl_s == 3600.0  # Redis entries never live forever by default
    cfg_file = write(tmp_path / "s.toml", '[cache]\nttl_s = 0\nmax_entry_bytes = 4096\ntimeout_s = 0.05\n'
                                          'breaker_failures = 3\nbreaker_cooldown_s = 1.5\nwrite_queue_size = 8\n')
    c = load_config(["--config", str(cfg_file)], {}).cache_config
    assert (c.ttl_s, c.max_entry_bytes, c.timeout_s, c.breaker_failures, c.breaker_cooldown_s,
            c.write_queue_size) == (0.0, 4096, 0.05, 3, 1.5, 8)


def test_redis_url_from_the_flag_or_the_environment_and_the_password_never_shown():
    url = "rediss://user:s3cret@cache.internal:6380/2"
    cfg = load_config(["--cache", url], {"REDIS_PASSWORD": "other"})
    assert cfg.cache == url and cfg.redis_password == "other"
    assert "s3cret" not in repr(cfg) and "other" not in repr(cfg)
    from_env = load_config(["--cache", "redis"], {"REDIS_URL": url})
    assert from_env.cache == url and from_env.redis_password is None
    with pytest.raises(ConfigError, match=r"\$REDIS_URL"):
        load_config(["--cache", "redis"], {})
    for bad in ("redis://:s3cret@host:port/0", "redis://:s3cret@/0", "redis://:s3cret@host/cache"):
        with pytest.raises(ConfigError) as e:
            load_config(["--cache", bad], {})
        assert e.value.key == "server.cache" and "s3cret" not in str(e.value)


def test_metrics_endpoint_defaults_and_flags():
    cfg = load_config([], {})
    assert (cfg.metrics, cfg.metrics_host, cfg.metrics_port) == (True, "127.0.0.1", 8002)
    cfg = load_config(["--metrics-port", "9102", "--metrics-host", "0.0.0.0"], {})
    assert (cfg.metrics, cfg.metrics_host, cfg.metrics_port) == (True, "0.0.0.0", 9102)
    assert load_config(["--no-metrics"], {}).metrics is False


def test_config_path_from_the_environment(tmp_path):
    cfg_file = write(tmp_path / "s.toml", "[server]\nport = 9200\n")
    assert load_config([], {"INFERENCE_SERVER_CONFIG": str(cfg_file)}).port == 9200


@pytest.mark.parametrize("doc, key", [
    ({"server": {"port": "8001"}}, "server.port"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"server": {"prot": 1}}, "server.prot"),
    ({"server": {"log_level": "LOUD"}}, "server.log_level"),
    ({"server": {"drain_grace_s": -1}}, "server.drain_grace_s"),
    ({"batching": {"max_batch_size": -1}}, "batching.max_batch_size"),
    ({"batching": {"max_batch_size": True}}, "batching.max_batch_size"),
    ({"batching": {"instance_count": 0}}, "batching.instance_count"),
    ({"batching": {"preferred_batch_size": [0]}}, "batching.preferred_batch_size"),
    ({"batching": {"max_batch_size": 4, "preferred_batch_size": [8]}}, "batching.preferred_batch_size"),
    ({"models": [{"path": "x.onnx"}]}, "models[0].name"),
    ({"models": [{"name": "x"}]}, "models[0].path"),
    ({"models": [{"name": "x", "path": "x", "device": "tpu"}]}, "models[0].device"),
    ({"models": [{"name": "x", "path": "x", "execution": "gpu"}]}, "models[0].execution"),
    ({"server": {"execution": "fast"}}, "server.execution"),
    ({"server": {"workers": 0}}, "server.workers"),
    ({"server": {"workers": 2, "port": 0}}, "server.workers"),
    ({"server": {"metrics_port": 70000}}, "server.metrics_port"),
    ({"server": {"metrics": "yes"}}, "server.metrics"),
    ({"server": {"log_format": "xml"}}, "server.log_format"),
    ({"server": {"cache": "disk"}}, "server.cache"),
    ({"server": {"cache": "memory:lots"}}, "server.cache"),
    ({"server": {"cache": "http://host:6379"}}, "server.cache"),
    ({"server": {"cache_max_entry_bytes": 1}}, "server.cache_max_entry_bytes"),
    ({"cache": {"max_entry_bytes": 0}}, "cache.max_entry_bytes"),
    ({"cache": {"timeout_s": 0}}, "cache.timeout_s"),
    ({"cache": {"breaker_failures": 0}}, "cache.breaker_failures"),
    ({"cache": {"ttl": 5}}, "cache.ttl"),
    ({"models": [{"name": "x", "path": "x", "cache_ttl_s": -1}]}, "models[0].cache_ttl_s"),
    ({"models": [{"name": "x", "path": "x", "cache": "on"}]}, "models[0].cache"),
    ({"server": {"access_log": 1}}, "server.access_log"),
    ({"models": [{"name": "x", "path": "x", "batching": {"max_delay": 1}}]}, "models[0].batching.max_delay"),
])
def test_bad_values_name_their_key(doc, key):
    with pytest.raises(ConfigError) as e:
        parse_server(doc)
    assert e.value.key == key and key in str(e.value)


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(["--config", str(tmp_path / "missing.toml")], {})
    bad = write(tmp_path / "bad.toml", "[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--config", str(bad)], {})


def test_repository_serves_the_highest_version_with_its_config(tmp_path):
    for version in ("1", "3", "2", "10"):
        write(tmp_path / "m" / version / "model.onnx", "x")
    write(tmp_path / "m" / "config.toml", "device = \"cpu\"\n[batching]\nmax_batch_size = 4\n")
    write(tmp_path / "n" / "7" / "model.onnx", "x")
    write(tmp_path / "n" / "8" / "notes.txt", "a version directory with no model file is not a version")
    cfg = load_config(["--model-repository", str(tmp_path), "--max-queue-delay-us", "100"], {})
    repo = repository(cfg)
    assert repo.names() == ["m", "n"]
    (m,) = repo.read("m").selected().values()
    assert (m.name, m.version, m.path.parent.name, m.device) == ("m", "10", "10", "cpu")  # numerically newest
    assert (m.batching.max_batch_size, m.batching.max_queue_delay_us) == (4, 100)
    (n,) = repo.read("n").selected().values()
    assert (n.name, n.version, n.batching.max_batch_size) == ("n", "7", None)


@pytest.mark.parametrize("policy, served", [
    ("{ latest = 2 }", ["3", "10"]), ("{ all = true }", ["1", "2", "3", "10"]),
    ("{ specific = [2, 3, 99] }", ["2", "3"]),
])
def test_version_policy_picks_the_versions_that_serve(tmp_path, policy, served):
    for version in ("1", "3", "2", "10"):
        write(tmp_path / "m" / version / "model.onnx", "x")
    write(tmp_path / "m" / "config.toml", f"version_policy = {policy}\n")
    cfg = load_config(["--model-repository", str(tmp_path)], {})
    assert list(repository(cfg).read("m").selected()) == served


def test_repository_errors_name_the_file_and_key(tmp_path):
    write(tmp_path / "m" / "1" / "model.onnx", "x")
    write(tmp_path / "m" / "config.toml", "[batching]\nmax_queue_delay_us = -5\n")
    cfg = parse_server({"server": {"model_repository": str(tmp_path)}})
    with pytest.raises(ModelLoadError, match="config.toml:batching.max_queue_delay_us"):
        repository(cfg).read("m")
    write(tmp_path / "empty" / "notes.txt", "")
    with pytest.raises(ModelLoadError, match="has no <version>/model.onnx"):
        repository(cfg).read("empty")
    write(tmp_path / "both" / "1" / "model.onnx", "x")
    write(tmp_path / "both" / "config.toml", "")
    write(tmp_path / "both" / "config.pbtxt", "max_batch_size: 4\n")
    with pytest.raises(ModelLoadError, match="both config.toml and config.pbtxt .* ambiguous"):
        repository(cfg).read("both")
    cfg = parse_server({"server": {"model_repository": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match="is not a directory"):
        repository(cfg).names()


def test_a_directory_holding_model_onnx_is_one_model_named_by_model_name(tmp_path):
    """The single-model layout (KServe's /mnt/models for a storageUri naming one model): the config beside the file,
    the version directories and their policy all read as in a model directory; the name is --model-name."""
    write(tmp_path / "model.onnx", "x")
    write(tmp_path / "config.pbtxt", "max_batch_size: 4\n")
    cfg = load_config(["--model-repository", str(tmp_path), "--model-name", "iris"], {})
    repo = repository(cfg)
    assert repo.names() == ["iris"] and repo.model_dir("iris") == tmp_path and repo.model_dir("model.onnx") is None
    (m,) = repo.read("iris").selected().values()
    assert (m.name, m.version, m.path, m.batching.max_batch_size) == ("iris", "1", tmp_path / "model.onnx", 4)
    with pytest.raises(ModelLoadError, match="'other' is not in the model repository"):
        repo.read("other")
    assert set(repo.fingerprint("iris") or {}) == {""} and repo.fingerprint("other") is None

    versions = tmp_path / "versions"
    for version in ("1", "2", "3"):
        write(versions / version / "model.onnx", "x")
    write(versions / "config.toml", "version_policy = { latest = 2 }\n")
    cfg = parse_server({"server": {"model_repository": str(versions), "model_name": "iris"}})  # [server] too
    assert list(repository(cfg).read("iris").selected()) == ["2", "3"]
    # a directory of one model holds directories that are not models: its version directories, anything else
    assert repository(cfg).model_dir("2") is None and not repository(cfg).has("2") and repository(cfg).has("iris")
    assert repo.model_dir("versions") is None
    write(versions / "model.onnx", "x")
    with pytest.raises(ModelLoadError, match="itself and in version directories .*ambiguous"):
        repository(cfg).read("iris")


def test_one_model_without_model_name_is_a_start_up_error(tmp_path):
    write(tmp_path / "1" / "model.onnx", "x")
    cfg = load_config(["--model-repository", str(tmp_path)], {})
    with pytest.raises(ConfigError, match="'server.model_name': .* is one model, .* give --model-name NAME"):
        manager(cfg, tmp_path).known()


def test_model_name_with_a_repository_of_model_directories_names_nothing(tmp_path):
    """One KServe runtime passes --model-name whatever storageUri holds: with a Triton repository (or the empty
    /mnt/models a multi-model agent fills) each model keeps its directory's name, and the log says the flag is
    unused. A model named "1" (1/1/model.onnx) is a model directory, not a version."""
    write(tmp_path / "1" / "1" / "model.onnx", "x")
    write(tmp_path / "m" / "1" / "model.onnx", "x")
    cfg = load_config(["--model-repository", str(tmp_path), "--model-name", "isvc"], {})
    repo = repository(cfg)
    assert repo.names() == ["1", "m"] and repo.model_dir("isvc") is None
    assert "holds 2 model(s)" in repo.describe() and "--model-name 'isvc' is not used" in repo.describe()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Repository(empty, cfg, pbtxt_to_dict, "isvc").names() == []


def test_a_root_config_pbtxt_makes_one_model_of_the_file_its_default_model_filename_names(tmp_path):
    """A storageUri holding iris.onnx and a config.pbtxt naming it: one model, as Triton reads a model directory."""
    write(tmp_path / "iris.onnx", "x")
    write(tmp_path / "config.pbtxt", 'default_model_filename: "iris.onnx"\n')
    cfg = load_config(["--model-repository", str(tmp_path), "--model-name", "iris"], {})
    repo = repository(cfg)
    assert repo.names() == ["iris"] and repo.layout_warning() is None
    (m,) = repo.read("iris").selected().values()
    assert (m.version, m.path) == ("1", tmp_path / "iris.onnx")
    versions = tmp_path / "versions"
    write(versions / "2" / "iris.onnx", "x")
    write(versions / "config.pbtxt", 'default_model_filename: "iris.onnx"\n')
    assert list(Repository(versions, cfg, pbtxt_to_dict, "iris").read("iris").selected()) == ["2"]
    with pytest.raises(ConfigError, match="holds model.onnx or config.pbtxt itself .* give --model-name NAME"):
        Repository(versions, cfg, pbtxt_to_dict).names()


def test_onnx_files_in_a_root_that_serves_none_of_them_are_named_in_a_warning(tmp_path, caplog):
    """/mnt/models/iris.onnx (a storageUri naming a file other than model.onnx) is neither layout: the repository
    is empty, and the start-up log says why instead of serving nothing silently."""
    write(tmp_path / "iris.onnx", "x")
    cfg = load_config(["--model-repository", str(tmp_path), "--model-name", "iris"], {})
    assert repository(cfg).names() == []
    warning = repository(cfg).layout_warning()
    assert warning is not None and "holds iris.onnx itself, which is not served" in warning
    assert f"{tmp_path}/model.onnx" in warning and "default_model_filename" in warning
    caplog.set_level("WARNING", logger="inference_server.lifecycle.manager")
    started = manager(cfg, tmp_path)

    async def start_and_close() -> None:
        await started.start()
        await started.close(0)

    asyncio.run(start_and_close())
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [warning]
    write(tmp_path / "m" / "1" / "model.onnx", "x")  # a repository with model directories: still named
    assert repository(cfg).layout_warning() == warning
    write(tmp_path / "model.onnx", "x")  # one model: what it serves is its model.onnx, no warning
    assert repository(cfg).layout_warning() is None


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "a\\b"])
def test_a_model_name_that_cannot_name_a_model_is_refused(name):
    with pytest.raises(ConfigError, match="server.model_name"):
        load_config(["--model-name", name], {})


def test_a_repository_model_name_never_leaves_the_repository(tmp_path):
    write(tmp_path / "repo" / "m" / "1" / "model.onnx", "x")
    write(tmp_path / "outside" / "1" / "model.onnx", "x")
    repo = Repository(tmp_path / "repo", parse_server({}), pbtxt_to_dict)
    assert repo.model_dir("../outside") is None and repo.model_dir(".") is None and repo.model_dir("m") is not None
    assert repo.has("m") and not repo.has("outside") and not repo.has("../outside")
    gone = Repository(tmp_path / "gone", parse_server({}), pbtxt_to_dict)
    with pytest.raises(ConfigError, match="is not a directory"):
        gone.has("m")


def test_the_same_model_twice_is_refused(tmp_path):
    write(tmp_path / "a" / "1" / "model.onnx", "x")
    cfg = parse_server({"server": {"model_repository": str(tmp_path)},
                        "models": [{"name": "a", "path": "elsewhere.onnx"}]})
    with pytest.raises(ConfigError, match="both a \\[\\[models\\]\\] entry and a directory"):
        manager(cfg, tmp_path).known()
    cfg = parse_server({"models": [{"name": "b", "path": "x.onnx"}, {"name": "b", "path": "y.onnx"}]})
    with pytest.raises(ConfigError, match="configured more than once"):
        manager(cfg, tmp_path)


@pytest.mark.parametrize("argv, key", [
    (["--load-model", "a"], "server.load_models"),
    (["--model-control-mode", "explicit", "--load-model", "*", "--load-model", "a"], "server.load_models"),
    (["--model-control-mode", "poll"], "server.repository_poll_secs"),
    (["--model-control-mode", "poll", "--repository-poll-secs", "1"], "server.model_repository"),
    (["--repository-poll-secs", "1"], "server.repository_poll_secs"),
    (["--model-control-mode", "explicit", "--workers", "2"], "server.model_control_mode"),
])
def test_model_control_flags_that_do_not_fit_together_name_the_key(argv, key):
    with pytest.raises(ConfigError) as e:
        load_config(argv, {})
    assert e.value.key == key


def test_model_control_flags_and_their_triton_boolean_forms():
    cfg = load_config(["--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b",
                       "--exit-on-error", "--strict-readiness=false"], {})
    assert (cfg.model_control_mode, cfg.load_models, cfg.exit_on_error, cfg.strict_readiness) == \
        ("explicit", ("a", "b"), True, False)
    cfg = load_config(["--model-control-mode", "poll", "--repository-poll-secs", "0.5", "--model-repository", "."],
                      {})
    assert (cfg.model_control_mode, cfg.repository_poll_secs) == ("poll", 0.5)


def test_model_tables_take_session_options_warmup_and_an_mlflow_source():
    cfg = parse_server({"models": [
        {"name": "a", "path": "a.onnx", "inter_op_threads": 2, "graph_optimization_level": "basic",
         "execution_mode": "parallel", "warmup": {"batch_sizes": [1, 8], "data": "random", "count": 3}},
        {"name": "b", "source": "models:/churn@production", "poll_interval_s": 5},
    ]})
    a, b = cfg.models
    assert (a.inter_op_threads, a.graph_optimization_level, a.execution_mode) == (2, "basic", "parallel")
    assert (a.warmup.batch_sizes, a.warmup.data, a.warmup.count) == ((1, 8), "random", 3)
    assert (b.source, b.path, b.poll_interval_s) == ("models:/churn@production", None, 5.0)
    for bad, key in ((["name", "path", "source"], "models[0].source"), (["name", "source"], "models[0].source")):
        table = {"name": "c", "path": "c.onnx", "source": "models:/churn"}
        with pytest.raises(ConfigError) as e:
            parse_server({"models": [{k: table[k] for k in bad}]})
        assert e.value.key == key


def test_a_redis_url_option_redis_cannot_read_is_a_config_error_naming_no_password():
    from inference_server.app import build_cache

    cfg = parse_server({"server": {"cache": "redis://:s3cret@127.0.0.1:6379/0?socket_timeout=soon"}})
    with pytest.raises(ConfigError) as e:
        build_cache(cfg)
    assert e.value.key == "server.cache" and "socket_timeout" in str(e.value) and "s3cret" not in str(e.value)


@pytest.mark.parametrize("raw, expected", [
    (3, "3"), ("07", "7"), ("12", "12"), (0, None), ("0", None), (-1, None), ("-1", None), ("²", None),
    (True, None), (2.0, None), ("1" * 5000, None), ("v2", None), (None, None),
])
def test_one_reading_of_a_version_number_for_every_place_that_takes_one(raw, expected):
    from inference_server.config.model import version_number

    assert version_number(raw) == expected
