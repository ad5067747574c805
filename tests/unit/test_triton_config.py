"""Triton model configurations (config.pbtxt and RepositoryModelLoad's JSON) translated into ModelConfig."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from inference_server.config.model import (
    DEFAULT_MAX_QUEUE_SIZE,
    BatchingConfig,
    ModelConfig,
    QueueConfig,
    QueuePolicy,
    TensorDecl,
    VersionPolicy,
    WarmupConfig,
)
from inference_server.errors import ConfigError
from inference_server.lifecycle.triton_model import TRITON_DATATYPES, model_config_from_triton
from inference_server.protocol._generated import model_config_pb2
from inference_server.protocol.tensors import DATATYPES
from inference_server.protocol.triton_config import json_to_dict, pbtxt_to_dict

WHERE = "repo/resnet/config.pbtxt:"


@dataclass
class Defaults:
    device: str = "auto"
    execution: str = "thread"
    batching: BatchingConfig = field(default_factory=lambda: BatchingConfig(max_batch_size=64, instance_count=3))


def convert(text: str, name: str = "resnet", defaults: Defaults | None = None) -> ModelConfig:
    return model_config_from_triton(pbtxt_to_dict(text), name=name, defaults=defaults or Defaults(), where=WHERE)


def refusal(text: str, name: str = "resnet") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        convert(text, name)
    return info.value


FULL = """
name: "resnet"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 16
default_model_filename: "resnet50.onnx"
version_policy { specific { versions: [3, 1, 3] } }
input [
  { name: "pixels" data_type: TYPE_FP32 format: FORMAT_NONE dims: [3, 224, 224] },
  { name: "ids" data_type: TYPE_STRING dims: [-1] }
]
output [ { name: "logits" data_type: TYPE_FP16 dims: [1000] } ]
dynamic_batching {
  preferred_batch_size: [8, 4, 8]
  max_queue_delay_microseconds: 500
  preserve_ordering: true
  default_queue_policy { max_queue_size: 128 }
}
instance_group [ { name: "a" kind: KIND_GPU count: 2 }, { kind: KIND_GPU } ]
optimization { graph { level: 1 } }
parameters { key: "intra_op_thread_count" value: { string_value: "4" } }
parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
parameters { key: "execution_mode" value: { string_value: "1" } }
response_cache { enable: false }
model_warmup [
  { name: "zero" batch_size: 0
    inputs { key: "pixels" value { data_type: TYPE_FP32 dims: [3, 224, 224] zero_data: true } } },
  { name: "rand" batch_size: 8 count: 3
    inputs { key: "pixels" value { data_type: TYPE_FP32 dims: [3, 224, 224] random_data: true } } },
  { name: "one" batch_size: 1 count: 2 }
]
"""


def test_a_full_config_maps_every_supported_field():
    assert convert(FULL) == ModelConfig(
        name="resnet", path=None, version="1", device="cuda", execution="thread",
        intra_op_threads=4, inter_op_threads=2, graph_optimization_level="extended", execution_mode="parallel",
        cache=False, cache_ttl_s=None,
        batching=BatchingConfig(max_batch_size=16, max_queue_delay_us=500, preferred_batch_size=(4, 8),
                                max_queue_size=128, instance_count=3),
        version_policy=VersionPolicy(kind="specific", specific=("1", "3")),
        warmup=WarmupConfig(batch_sizes=(1, 8), data="random", count=3),
        filename="resnet50.onnx",
        declared=(TensorDecl("input", "pixels", "FP32", (3, 224, 224)), TensorDecl("input", "ids", "BYTES", (-1,)),
                  TensorDecl("output", "logits", "FP16", (1000,))),
        # What an MLflow onnx flavour may not override (lifecycle/onnx_flavor.py): every session setting it set.
        explicit=frozenset({"device", "intra_op_threads", "inter_op_threads", "graph_optimization_level",
                            "execution_mode"}),
    )


def test_what_a_config_leaves_out_takes_triton_and_server_defaults():
    cfg = convert('platform: "onnxruntime_onnx"', defaults=Defaults(device="cpu", execution="inline"))
    assert (cfg.name, cfg.path, cfg.version, cfg.filename) == ("resnet", None, "1", "model.onnx")
    assert (cfg.device, cfg.execution) == ("cpu", "inline")  # the server's, not ModelConfig's "auto"
    assert cfg.explicit == frozenset()  # no session setting is the config's own: an MLflow onnx flavour may fill them
    # max_batch_size absent means 0 (no batching) as in Triton, not the server's 64; instance_count is not the
    # server's 3 either: a Triton config without instance_group has one instance
    assert cfg.batching == BatchingConfig(max_batch_size=0, instance_count=1)
    assert (cfg.version_policy, cfg.warmup, cfg.declared) == (VersionPolicy(), WarmupConfig(), ())
    assert (cfg.graph_optimization_level, cfg.execution_mode, cfg.intra_op_threads, cfg.cache) == (
        "all", "sequential", 0, True)


def test_an_empty_config_is_an_onnx_runtime_model_too():
    assert convert("").name == "resnet"


@pytest.mark.parametrize("groups, device, count", [
    ("instance_group [ { kind: KIND_CPU count: 3 } ]", "cpu", 3),
    ("instance_group [ { count: 2 }, { kind: KIND_AUTO } ]", "auto", 3),  # absent kind = KIND_AUTO
    ("instance_group [ { kind: KIND_GPU } ]", "cuda", 1),
])
def test_instance_groups_set_device_and_instance_count(groups, device, count):
    cfg = convert(groups)
    assert (cfg.device, cfg.batching.instance_count) == (device, count)


def test_instance_groups_of_different_kinds_are_refused():
    err = refusal("instance_group [ { kind: KIND_CPU }, { kind: KIND_CPU }, { kind: KIND_GPU } ]")
    assert err.key == f"{WHERE}instance_group[2].kind" and "KIND_GPU differs" in str(err)


@pytest.mark.parametrize("policy, expected", [
    ("latest { num_versions: 2 }", VersionPolicy(kind="latest", latest=2)),
    ("all {}", VersionPolicy(kind="all")),
    ("specific { versions: 7 }", VersionPolicy(kind="specific", specific=("7",))),
])
def test_version_policies(policy, expected):
    assert convert(f"version_policy {{ {policy} }}").version_policy == expected


def test_a_version_policy_that_selects_nothing_is_refused():
    assert refusal("version_policy { latest {} }").key == f"{WHERE}version_policy.latest.num_versions"
    assert refusal("version_policy { specific {} }").key == f"{WHERE}version_policy.specific.versions"


@pytest.mark.parametrize("level, expected", [(-1, "basic"), (0, "all"), (1, "extended"), (2, "disable")])
def test_graph_levels_follow_the_onnx_runtime_backend(level, expected):
    assert convert(f"optimization {{ graph {{ level: {level} }} }}").graph_optimization_level == expected


def test_an_unknown_graph_level_is_refused():
    err = refusal("optimization { graph { level: 3 } }")
    assert err.key == f"{WHERE}optimization.graph.level"


@pytest.mark.parametrize("key, value", [("execution_mode", "2"), ("intra_op_thread_count", "four"),
                                        ("inter_op_thread_count", "-1")])
def test_bad_onnx_runtime_parameter_values_are_refused(key, value):
    err = refusal(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    assert err.key == f"{WHERE}parameters.{key}.string_value" and value in str(err)


def test_warmup_batch_sizes_keep_their_order_and_data_stays_zeros_without_random_inputs():
    cfg = convert("""max_batch_size: 8
model_warmup [ { batch_size: 8 inputs { key: "x" value { data_type: TYPE_FP32 dims: 4 zero_data: true } } },
               { batch_size: 2 count: 0 }, { batch_size: 8 } ]""")
    assert cfg.warmup == WarmupConfig(batch_sizes=(8, 2), data="zeros", count=1)


def test_a_warmup_batch_larger_than_max_batch_size_is_refused():
    assert refusal("max_batch_size: 4 model_warmup [ { batch_size: 8 } ]").key == f"{WHERE}model_warmup[0].batch_size"
    assert refusal("model_warmup [ { batch_size: 2 } ]").key == f"{WHERE}model_warmup[0].batch_size"


def test_preferred_batch_sizes_above_max_batch_size_are_refused():
    err = refusal("max_batch_size: 4 dynamic_batching { preferred_batch_size: [2, 8] }")
    assert err.key == f"{WHERE}dynamic_batching.preferred_batch_size" and "(4)" in str(err)


def test_response_cache_enable_true_keeps_the_cache():
    assert convert("response_cache { enable: true }").cache is True


def test_a_name_other_than_the_models_is_refused():
    err = refusal('name: "densenet"')
    assert err.key == f"{WHERE}name" and "'densenet'" in str(err) and "'resnet'" in str(err)


@pytest.mark.parametrize("text, field_name", [
    ('platform: "tensorrt_plan"', "platform"),
    ('backend: "python"', "backend"),
    ('platform: "onnxruntime_onnx" backend: "pytorch"', "backend"),
])
def test_other_platforms_and_backends_are_refused(text, field_name):
    err = refusal(text)
    assert err.key == f"{WHERE}{field_name}" and "only ONNX Runtime models are served" in str(err)


@pytest.mark.parametrize("filename", ["../other/model.onnx", "sub/model.onnx", "..", "a\\\\b.onnx"])
def test_a_default_model_filename_outside_the_version_directory_is_refused(filename):
    assert refusal(f'default_model_filename: "{filename}"').key == f"{WHERE}default_model_filename"


@pytest.mark.parametrize("text, field_name", [
    ('input [ { name: "x" data_type: TYPE_FP32 dims: 1 }, { name: "x" data_type: TYPE_FP32 dims: 1 } ]',
     "input[1].name"),
    ('output [ { name: "y" dims: 1 } ]', "output[0].data_type"),
    ('input [ { data_type: TYPE_FP32 dims: 1 } ]', "input[0].name"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [2, 0] } ]', "input[0].dims"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [-2] } ]', "input[0].dims"),
])
def test_malformed_tensor_declarations_are_refused(text, field_name):
    assert refusal(text).key == f"{WHERE}{field_name}"


UNSUPPORTED = [
    ('sequence_batching {}', "sequence_batching"),
    ('ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }', "ensemble_scheduling"),
    ('batch_input [ { target_name: "n" data_type: TYPE_INT32 source_input: "x" } ]', "batch_input"),
    ('batch_output [ { target_name: "y" source_input: "x" } ]', "batch_output"),
    ("model_transaction_policy { decoupled: true }", "model_transaction_policy"),
    ('model_repository_agents { agents [ { name: "checksum" } ] }', "model_repository_agents"),
    ('model_operations { op_library_filename: "libcustom.so" }', "model_operations"),
    ('cc_model_filenames { key: "8.0" value: "a100.onnx" }', "cc_model_filenames"),
    ('runtime: "libtriton_custom.so"', "runtime"),
    ('metric_tags { key: "team" value: "vision" }', "metric_tags"),
    ('model_metrics { metric_control [ { metric_identifier { family: "f" } } ] }', "model_metrics"),
    ("instance_group [ { kind: KIND_GPU gpus: [0, 1] } ]", "instance_group[0].gpus"),
    ('instance_group [ { count: 1 }, { profile: "0" } ]', "instance_group[1].profile"),
    ("instance_group [ { passive: true } ]", "instance_group[0].passive"),
    ('instance_group [ { host_policy: "numa0" } ]', "instance_group[0].host_policy"),
    ("instance_group [ { secondary_devices [ { kind: KIND_NVDLA device_id: 1 } ] } ]",
     "instance_group[0].secondary_devices"),
    ('instance_group [ { rate_limiter { resources [ { name: "r" count: 1 } ] } } ]', "instance_group[0].rate_limiter"),
    ("instance_group [ { kind: KIND_MODEL } ]", "instance_group[0].kind"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: 4 reshape { shape: [] } } ]', "input[0].reshape"),
    ('output [ { name: "y" data_type: TYPE_FP32 dims: 4 reshape { shape: [2, 2] } } ]', "output[0].reshape"),
    ('input [ { name: "x" data_type: TYPE_INT32 dims: 1 is_shape_tensor: true } ]', "input[0].is_shape_tensor"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: 1 allow_ragged_batch: true } ]', "input[0].allow_ragged_batch"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: 1 optional: true } ]', "input[0].optional"),
    ('output [ { name: "y" data_type: TYPE_FP32 dims: 4 label_filename: "labels.txt" } ]', "output[0].label_filename"),
    ('model_warmup [ { inputs { key: "x" value { data_type: TYPE_FP32 dims: 1 input_data_file: "x.bin" } } } ]',
     "model_warmup[0].inputs.x.input_data_file"),
    ('parameters { key: "enable_mem_arena" value: { string_value: "1" } }', "parameters.enable_mem_arena"),
    ("optimization { cuda { graphs: true } }", "optimization.cuda"),
    ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }',
     "optimization.execution_accelerators.gpu_execution_accelerator[0].name"),
    ('optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }',
     "optimization.execution_accelerators.cpu_execution_accelerator"),
    ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" parameters { key: '
     '"cudnn_conv_use_max_workspace" value: "0" } } ] } }',
     "optimization.execution_accelerators.gpu_execution_accelerator[0].parameters.cudnn_conv_use_max_workspace"),
    ("optimization { priority: PRIORITY_MAX }", "optimization.priority"),
]


@pytest.mark.parametrize("text, field_name", UNSUPPORTED, ids=[f for _, f in UNSUPPORTED])
def test_fields_this_server_cannot_honour_are_refused_by_name(text, field_name):
    err = refusal(text)
    assert err.key == f"{WHERE}{field_name}"
    assert f"'{WHERE}{field_name}'" in str(err) and "not supported by this server" in str(err)


def test_layout_and_pinned_memory_hints_from_triton_configs_are_accepted():
    cfg = convert("""
input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 8, 8] } ]
optimization { input_pinned_memory { enable: true } output_pinned_memory { enable: true } }
""")
    assert cfg.declared == (TensorDecl("input", "x", "FP32", (3, 8, 8)),)


def test_unsupported_fields_holding_only_defaults_are_accepted():
    cfg = convert("""
model_transaction_policy { decoupled: false }
dynamic_batching { priority_levels: 0 default_queue_policy { timeout_action: REJECT allow_timeout_override: false } }
optimization { priority: PRIORITY_DEFAULT cuda { graphs: false } input_pinned_memory { enable: false } }
input [ { name: "x" data_type: TYPE_FP32 dims: 1 optional: false is_shape_tensor: false format: FORMAT_NONE } ]
instance_group [ { kind: KIND_CPU gpus: [] passive: false } ]
""")
    assert cfg.declared == (TensorDecl("input", "x", "FP32", (1,)),) and cfg.device == "cpu"


def test_a_hand_made_document_may_spell_out_default_values():
    doc = {"runtime": "", "model_transaction_policy": {"decoupled": False}, "batch_input": [],
           "optimization": {"gather_kernel_buffer_threshold": 0, "graph": {"level": -1}}}
    assert model_config_from_triton(doc, name="m", defaults=Defaults(), where="m:").graph_optimization_level == "basic"
    with pytest.raises(ConfigError) as info:
        model_config_from_triton({"optimization": {"eager_batching": True}}, name="m", defaults=Defaults(), where="m:")
    assert info.value.key == "m:optimization.eager_batching"


def test_unknown_keys_of_a_hand_made_document_are_refused():
    with pytest.raises(ConfigError) as info:
        model_config_from_triton({"max_batch_size": 2, "colour": "red"}, name="m", defaults=Defaults(), where="m:")
    assert info.value.key == "m:colour" and "not supported by this server" in str(info.value)


def test_64_bit_integers_arrive_as_strings_and_are_read_as_integers():
    doc = pbtxt_to_dict("""max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 5000000000 }
version_policy { specific { versions: [12] } }
input [ { name: "x" data_type: TYPE_INT64 dims: [-1, 3] } ]""")
    assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == "5000000000"  # what protobuf gives us
    assert doc["input"][0]["dims"] == ["-1", "3"]
    cfg = model_config_from_triton(doc, name="m", defaults=Defaults(), where="m:")
    assert cfg.batching.max_queue_delay_us == 5_000_000_000
    assert cfg.declared[0].dims == (-1, 3) and cfg.version_policy.specific == ("12",)


def test_a_64_bit_string_that_is_not_a_number_is_refused_by_name():
    doc = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": "soon"}}
    with pytest.raises(ConfigError) as info:
        model_config_from_triton(doc, name="m", defaults=Defaults(), where="m:")
    assert info.value.key == "m:dynamic_batching.max_queue_delay_microseconds" and "'soon'" in str(info.value)


def test_the_json_form_maps_like_the_text_form():
    text = json.dumps({
        "name": "resnet", "backend": "onnxruntime", "maxBatchSize": 8,  # JSON names or proto names, both
        "dynamic_batching": {"max_queue_delay_microseconds": "250", "preferred_batch_size": [4]},
        "instance_group": [{"kind": "KIND_CPU", "count": 2}],
        "version_policy": {"specific": {"versions": ["2", 5]}},
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", 3]}],
        "parameters": {"intra_op_thread_count": {"string_value": "3"}},
    })
    cfg = model_config_from_triton(json_to_dict(text), name="resnet", defaults=Defaults(), where="load:")
    assert cfg.batching == BatchingConfig(max_batch_size=8, max_queue_delay_us=250, preferred_batch_size=(4,),
                                          instance_count=2)
    assert (cfg.device, cfg.intra_op_threads) == ("cpu", 3)
    assert cfg.version_policy == VersionPolicy(kind="specific", specific=("2", "5"))
    assert cfg.declared == (TensorDecl("input", "x", "FP32", (-1, 3)),)


def test_the_json_form_refuses_what_the_text_form_refuses():
    doc = json_to_dict('{"sequence_batching": {"max_sequence_idle_microseconds": "1000"}}')
    with pytest.raises(ConfigError) as info:
        model_config_from_triton(doc, name="m", defaults=Defaults(), where="load:")
    assert info.value.key == "load:sequence_batching"


@pytest.mark.parametrize("text, fragment", [
    ('{"max_batch_size": 4, "colour": "red"}', 'no field named "colour"'),
    ('{"max_batch_size": "many"}', "max_batch_size"),
    ('{"max_batch_size": 4,', "line 1 column"),
    ('["max_batch_size"]', "expected an object"),
])
def test_bad_json_is_a_value_error(text, fragment):
    with pytest.raises(ValueError, match="invalid model configuration JSON") as info:
        json_to_dict(text)
    assert fragment in str(info.value) and not isinstance(info.value, ConfigError)


@pytest.mark.parametrize("text, position, fragment", [
    ('name: "m"\nmax_batch_size: lots\n', "line 2, column 17", "Couldn't parse integer"),
    ('name: "m"\n\n  colour: "red"\n', "line 3, column 3", 'no field named "colour"'),
    ('input [ { name: "x" data_type: TYPE_FLOAT32 } ]', "line 1, column 32", "TYPE_FLOAT32"),
    ('dynamic_batching {}\nsequence_batching {}', "line 2, column 1", "oneof"),
])
def test_bad_text_format_is_a_value_error_with_its_position(text, position, fragment):
    with pytest.raises(ValueError, match="invalid model configuration") as info:
        pbtxt_to_dict(text)
    assert position in str(info.value) and fragment in str(info.value)


def test_the_type_table_covers_every_triton_type_with_its_protocol_name():
    triton_types = set(model_config_pb2.DataType.keys()) - {"TYPE_INVALID"}
    assert set(TRITON_DATATYPES) == triton_types
    assert TRITON_DATATYPES == {dt.config_name: dt.name for dt in DATATYPES.values()}
    assert TRITON_DATATYPES["TYPE_STRING"] == "BYTES"


# -- priority levels and queue policies (dynamic_batching) ---------------------------------------------------------

QUEUED = """
max_batch_size: 8
dynamic_batching {
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 100000 allow_timeout_override: true
                         max_queue_size: 16 }
  priority_queue_policy { key: 1 value { default_timeout_microseconds: 5000 max_queue_size: 4 } }
  priority_queue_policy { key: 3 value { timeout_action: DELAY } }
}
"""


def test_priority_levels_and_queue_policies_map_from_config_pbtxt():
    cfg = convert(QUEUED)
    assert cfg.batching.max_queue_size == 16  # the default policy's bound, as before
    assert cfg.queue == QueueConfig(
        priority_levels=3, default_priority_level=2, timeout_action="DELAY", default_timeout_us=100000,
        allow_timeout_override=True,
        # a level's policy is whole: what it leaves out is protobuf's default, not default_queue_policy's (Triton),
        # except an absent bound, which is this server's default as for every model
        priority_queue_policy=((1, QueuePolicy(default_timeout_us=5000, max_queue_size=4)),
                               (3, QueuePolicy(timeout_action="DELAY", max_queue_size=DEFAULT_MAX_QUEUE_SIZE))))
    assert cfg.queue.timeouts and cfg.queue.needed


def test_the_same_queue_config_from_repository_json_maps_alike():
    doc = json_to_dict(json.dumps(pbtxt_to_dict(QUEUED)))  # 64-bit integers and map keys arrive as strings
    assert model_config_from_triton(doc, name="resnet", defaults=Defaults(), where=WHERE) == convert(QUEUED)


def test_a_queue_policy_of_max_queue_size_only_needs_no_policy_queue():
    cfg = convert("max_batch_size: 4 dynamic_batching { default_queue_policy { max_queue_size: 8 } }")
    assert cfg.queue == QueueConfig() and not cfg.queue.needed and cfg.batching.max_queue_size == 8


@pytest.mark.parametrize("text, key, words", [
    ("dynamic_batching { priority_levels: 2 }", "dynamic_batching.default_priority_level",
     "must be in [1, priority_levels (2)], got 0"),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 3 }", "dynamic_batching.default_priority_level",
     "must be in [1, priority_levels (2)], got 3"),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value {} } }",
     "dynamic_batching.priority_queue_policy.3", "the level must be in [1, priority_levels (2)]"),
    ("dynamic_batching { default_priority_level: 1 }", "dynamic_batching.default_priority_level",
     "needs priority_levels"),
    ("dynamic_batching { priority_queue_policy { key: 1 value {} } }", "dynamic_batching.priority_queue_policy",
     "needs priority_levels"),
    ("dynamic_batching { preserve_ordering: true priority_levels: 2 default_priority_level: 1 }",
     "dynamic_batching.priority_levels", "only one priority level is allowed when 'preserve_ordering' is true"),
    ("dynamic_batching { preserve_ordering: true default_queue_policy { timeout_action: DELAY "
     "default_timeout_microseconds: 10 } }", "dynamic_batching.default_queue_policy.timeout_action",
     "DELAY is not allowed when 'preserve_ordering' is true"),
])
def test_bad_priority_settings_are_refused_naming_the_key(text, key, words):
    err = refusal(text)
    assert err.key == f"{WHERE}{key}" and words in str(err)


ACCELERATOR = ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" '
               'parameters { key: "gpu_mem_limit" value: "%s" } parameters { key: "arena_extend_strategy" '
               'value: "%s" } } ] } }')
ACCELERATOR_AT = "optimization.execution_accelerators.gpu_execution_accelerator[0].parameters."
PARAMETERS = ('parameters { key: "gpu_mem_limit" value: { string_value: "%s" } } '
              'parameters { key: "arena_extend_strategy" value: { string_value: "%s" } }')


@pytest.mark.parametrize("text", [ACCELERATOR % (4294967296, "kSameAsRequested"), PARAMETERS % (4294967296, "1")],
                         ids=["cuda accelerator", "parameters"])
def test_the_cuda_memory_limit_and_arena_strategy_map_from_either_triton_spelling(text):
    """onnxruntime_backend's README: the "cuda" gpu_execution_accelerator's parameters (ONNX Runtime's values), and
    the model parameters it still reads (the strategy as "0" | "1")."""
    cfg = convert(text)
    assert (cfg.gpu_mem_limit_bytes, cfg.arena_extend_strategy) == (4 * 2**30, "kSameAsRequested")
    assert {"gpu_mem_limit_bytes", "arena_extend_strategy"} <= cfg.explicit


def test_without_cuda_settings_a_triton_model_keeps_the_defaults_and_size_max_means_no_limit():
    assert (convert("").gpu_mem_limit_bytes, convert("").arena_extend_strategy) == (0, "kNextPowerOfTwo")
    cfg = convert(PARAMETERS % (2**64 - 1, "0"))
    assert (cfg.gpu_mem_limit_bytes, cfg.arena_extend_strategy) == (0, "kNextPowerOfTwo")


@pytest.mark.parametrize("text, key, words", [
    (ACCELERATOR % (1024, "1"), f"{ACCELERATOR_AT}arena_extend_strategy", "'kNextPowerOfTwo', 'kSameAsRequested'"),
    (PARAMETERS % (1024, "kSameAsRequested"), "parameters.arena_extend_strategy.string_value", "'0', '1'"),
    (ACCELERATOR % ("4GB", "kSameAsRequested"), f"{ACCELERATOR_AT}gpu_mem_limit", "expected an integer >= 1"),
    (PARAMETERS % (0, "0"), "parameters.gpu_mem_limit.string_value", "expected an integer >= 1"),
    (PARAMETERS % (2**64, "0"), "parameters.gpu_mem_limit.string_value", "at most"),
    (PARAMETERS % (1024, "0") + ACCELERATOR % (2048, "kSameAsRequested"), "parameters.gpu_mem_limit", "give it once"),
    ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" parameters { key: '
     '"gpu_mem_limit" value: "1" } }, { name: "cuda" parameters { key: "gpu_mem_limit" value: "2" } } ] } }',
     "optimization.execution_accelerators.gpu_execution_accelerator[1].parameters.gpu_mem_limit", "given twice"),
])
def test_bad_cuda_memory_settings_are_refused_naming_the_key(text, key, words):
    err = refusal(text)
    assert err.key == f"{WHERE}{key}" and words in str(err)
