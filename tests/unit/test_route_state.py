"""Route state around the canary: administrators' weights, readiness, reloads, views, constant fallback answers,
shadow differences, and the `[routes.NAME]` config tables."""

from __future__ import annotations

import math
import tomllib
from collections import Counter

import numpy as np
import pytest

from inference_server.config.model import ModelConfig
from inference_server.config.routes import (
    CanaryConfig,
    FallbackConfig,
    ShadowConfig,
    VariantConfig,
    parse_route,
    with_aliases,
)
from inference_server.errors import ConfigError
from inference_server.routing.canary import CanaryConflict
from inference_server.routing.fallback import constant_outputs
from inference_server.routing.router import RouteError, Router, RouteState
from inference_server.routing.shadow import difference

CONTRACT = """
[routes.churn]
variants = [ { name = "stable", version = "3", weight = 90 }, { name = "candidate", version = "4", weight = 10 } ]
routing_key = "routing_key"
[routes.churn.canary]
candidate = "candidate"
steps_percent = [10, 25, 50, 100]
interval_s = 30
min_requests = 100
max_error_ratio = 0.01
max_p99_ms = 50
max_p99_ratio = 1.5
failed_windows_to_rollback = 1
[routes.churn.shadow]
model = "churn"
version = "5"
percent = 20
[routes.churn.fallback]
model = "churn_simple"
"""

KEYS = [f"user-{i}" for i in range(10_000)]


class Clock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def contract_table() -> dict:
    return tomllib.loads(CONTRACT)["routes"]["churn"]


def contract():
    return parse_route("churn", contract_table())


def all_ready(model: str, version: str) -> bool:
    return True


def not_ready(*versions: str):
    return lambda model, version: version not in versions


def three_way():
    return parse_route("abc", {"variants": [{"name": "a", "version": 1, "weight": 50},
                                            {"name": "b", "version": 2, "weight": 30},
                                            {"name": "c", "version": 3, "weight": 20}]})


def healthy_window(router: Router, state: RouteState, clock: Clock) -> list[tuple[str, str]]:
    for _ in range(100):
        router.record(state, "candidate", "OK", 0.005)
    for _ in range(200):
        router.record(state, "stable", "OK", 0.005)
    clock.now += state.cfg.canary.interval_s
    return router.tick(now=clock.now)


def assignment(router: Router, state: RouteState, ready) -> dict[str, str | None]:
    out = {}
    for k in KEYS:
        v = router.choose(state, k, ready)
        out[k] = None if v is None else v.name
    return out


# -- set_weights ---------------------------------------------------------------------------------------------


def test_set_weights_is_refused_while_the_canary_runs_or_is_paused():
    router = Router([contract()], clock=Clock())
    state = router.route("churn")
    with pytest.raises(CanaryConflict):
        router.set_weights("churn", {"stable": 50, "candidate": 50})
    router.canary_command("churn", "pause")
    with pytest.raises(CanaryConflict):
        router.set_weights("churn", {"candidate": 50})
    assert state.weights == {"stable": 90.0, "candidate": 10.0} and state.canary.status == "paused"
    assert state.shares == {"stable": 90.0, "candidate": 10.0}


def test_after_abort_set_weights_applies_the_canary_goes_off_and_choose_follows():
    clock = Clock()
    router = Router([contract()], clock=clock)
    state = router.route("churn")
    router.canary_command("churn", "abort")
    assert state.shares == {"stable": 100.0, "candidate": 0.0}
    router.set_weights("churn", {"stable": 50, "candidate": 50})
    assert state.canary.status == "off" and state.canary.decision == "weights"
    assert state.weights == {"stable": 50.0, "candidate": 50.0}
    assert state.shares == {"stable": 50.0, "candidate": 50.0}
    counts = Counter(router.choose(state, k, all_ready).name for k in KEYS)
    assert abs(counts["candidate"] / len(KEYS) - 0.5) <= 0.02
    # The canary no longer judges anything; the weights alone decide.
    for _ in range(100):
        router.record(state, "candidate", "INTERNAL", 0.005)
    assert router.tick(now=clock.now + 3600) == []
    assert router.next_window_s() is None
    router.set_weights("churn", {"stable": 0})
    assert state.shares == {"stable": 0.0, "candidate": 100.0}
    assert {router.choose(state, k, all_ready).name for k in KEYS[:1000]} == {"candidate"}
    # Starting the canary again takes the share back, at the first step (the others need a weight for the rest).
    router.set_weights("churn", {"stable": 1})
    router.canary_command("churn", "start")
    assert state.canary.status == "running" and state.canary.step == 0


@pytest.mark.parametrize("weights", [
    {"nope": 1},
    {"stable": -1},
    {"stable": float("nan")},
    {"stable": float("inf")},
    {"stable": True},
    {"stable": "5"},
    {"stable": 0, "candidate": 0},
])
def test_bad_weights_raise_route_error_and_change_nothing(weights):
    router = Router([contract()], clock=Clock())
    state = router.route("churn")
    router.canary_command("churn", "abort")
    with pytest.raises(RouteError):
        router.set_weights("churn", weights)
    assert state.weights == {"stable": 90.0, "candidate": 10.0}
    assert state.canary.status == "aborted"
    assert state.shares == {"stable": 100.0, "candidate": 0.0}


def test_set_weights_on_a_route_without_canary_and_on_an_unknown_route():
    router = Router([three_way()], clock=Clock())
    state = router.set_weights("abc", {"a": 0, "c": 70})
    assert state.shares == {"a": 0.0, "b": 30.0, "c": 70.0}
    assert "a" not in {router.choose(state, k, all_ready).name for k in KEYS}
    with pytest.raises(KeyError):
        router.set_weights("nope", {"a": 1})


# -- readiness -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing,version", [("a", "1"), ("b", "2"), ("c", "3")])
def test_a_variant_that_is_not_ready_gets_no_keys_and_only_its_keys_move(missing, version):
    router = Router([three_way()], clock=Clock())
    state = router.route("abc")
    full = assignment(router, state, all_ready)
    partial = assignment(router, state, not_ready(version))
    assert missing not in set(partial.values())
    moved = [k for k in KEYS if full[k] != partial[k]]
    assert moved == [k for k in KEYS if full[k] == missing]
    # Its keys spread over the others by their shares.
    got = Counter(partial[k] for k in moved)
    others = {n: w for n, w in {"a": 50, "b": 30, "c": 20}.items() if n != missing}
    for name, weight in others.items():
        assert abs(got[name] / len(moved) - weight / sum(others.values())) <= 0.05
    # Ready again: every key is back where it was.
    assert assignment(router, state, all_ready) == full


def test_an_unready_candidate_during_the_canary_sends_its_keys_to_stable():
    router = Router([contract()], clock=Clock())
    state = router.route("churn")
    full = assignment(router, state, all_ready)
    partial = assignment(router, state, not_ready("4"))
    assert set(partial.values()) == {"stable"}
    assert all(full[k] == "stable" for k in KEYS if full[k] == partial[k])
    assert sum(v == "candidate" for v in full.values()) > 0


def test_when_nothing_with_a_share_is_ready_the_ready_variants_share_by_configured_weight():
    clock = Clock()
    cfg = parse_route("churn", {
        "variants": [{"name": "stable", "version": 3, "weight": 60}, {"name": "other", "version": 2, "weight": 30},
                     {"name": "candidate", "version": 4, "weight": 10}],
        "canary": {"candidate": "candidate", "steps_percent": [50, 100], "interval_s": 30, "min_requests": 100}})
    router = Router([cfg], clock=clock)
    state = router.route("churn")
    assert healthy_window(router, state, clock) == [("churn", "promote")]
    assert state.shares == {"stable": 0.0, "other": 0.0, "candidate": 100.0}
    assert {router.choose(state, k, all_ready).name for k in KEYS} == {"candidate"}
    # The promoted candidate was unloaded: the ready variants share by their configured weights.
    counts = Counter(router.choose(state, k, not_ready("4")).name for k in KEYS)
    assert set(counts) == {"stable", "other"}
    assert abs(counts["stable"] / len(KEYS) - 2 / 3) <= 0.02
    # Nothing ready at all: no variant.
    assert router.choose(state, "k", lambda m, v: False) is None
    assert router.choose(state, None, lambda m, v: False) is None


def test_a_rolled_back_candidate_serves_only_when_nothing_else_is_ready():
    clock = Clock()
    router = Router([contract()], clock=clock)
    state = router.route("churn")
    for _ in range(100):
        router.record(state, "candidate", "INTERNAL", 0.005)
    clock.now += 30
    assert router.tick() == [("churn", "rollback")]
    assert {router.choose(state, k, all_ready).name for k in KEYS[:1000]} == {"stable"}
    assert {router.choose(state, k, not_ready("3")).name for k in KEYS[:1000]} == {"candidate"}


class FakeShadow:
    queued = 3


# -- reload --------------------------------------------------------------------------------------------------


def test_reload_keeps_progress_weights_breakers_and_shadow_where_the_config_means_the_same():
    clock = Clock()
    other = parse_route("other", {"variants": [{"name": "x", "version": 1, "weight": 1},
                                               {"name": "y", "version": 2, "weight": 1}]})
    router = Router([contract(), other, three_way()], clock=clock)
    churn = router.route("churn")
    assert healthy_window(router, churn, clock) == [("churn", "step")]
    assert healthy_window(router, churn, clock) == [("churn", "step")]
    for _ in range(5):
        churn.breakers["candidate"].failure()
    assert churn.breakers["candidate"].state == "open"
    router.set_weights("other", {"x": 3})
    shadow = FakeShadow()
    churn.shadow = shadow
    before = {v.name: v for v in router.views(all_ready)}

    new, old = router.reload([contract(), parse_route("other", {"variants": [{"name": "x", "version": 1, "weight": 1},
                                                                             {"name": "y", "version": 2,
                                                                              "weight": 1}]})])
    assert [s.cfg.name for s in new] == ["churn", "other"]
    assert {s.cfg.name for s in old} == {"churn", "other", "abc"}
    assert router.route("abc") is None  # removed
    churn2 = router.route("churn")
    assert churn2 is not churn
    assert churn2.canary.status == "running" and churn2.canary.step == 2
    assert churn2.shares == {"stable": 50.0, "candidate": 50.0}
    assert churn2.breakers["candidate"].state == "open"
    assert churn2.shadow is shadow and churn.shadow is None
    assert router.route("other").weights == {"x": 3.0, "y": 1.0}
    after = {v.name: v for v in router.views(all_ready)}
    assert after["churn"].canary == before["churn"].canary and after["churn"].shadow_queued == 3
    assert after["churn"].canary.last_decision == "step" and after["churn"].canary.share_percent == 50.0
    # And it carries on from there.
    assert healthy_window(router, churn2, clock) == [("churn", "promote")]


def test_reload_with_changed_steps_starts_the_canary_afresh():
    clock = Clock()
    router = Router([contract()], clock=clock)
    churn = router.route("churn")
    healthy_window(router, churn, clock)
    assert churn.canary.step == 1
    table = contract_table()
    table["canary"]["steps_percent"] = [5, 50, 100]
    router.reload([parse_route("churn", table)])
    fresh = router.route("churn")
    assert fresh.canary.status == "running" and fresh.canary.step == 0 and fresh.canary.decision == "start"
    assert fresh.canary.window_start == clock.now
    assert fresh.shares == {"stable": 95.0, "candidate": 5.0}


def test_reload_with_changed_weights_or_fallback_drops_admin_weights_and_breakers():
    clock = Clock()
    router = Router([contract()], clock=clock)
    churn = router.route("churn")
    router.canary_command("churn", "abort")
    router.set_weights("churn", {"candidate": 90})
    churn.breakers["stable"].failure()
    table = contract_table()
    table["variants"][0]["weight"] = 80
    table["fallback"]["breaker_failures"] = 3
    router.reload([parse_route("churn", table)])
    fresh = router.route("churn")
    assert fresh.weights == {"stable": 80.0, "candidate": 10.0}
    assert fresh.breakers["stable"] is not churn.breakers["stable"]
    assert fresh.breakers["stable"].failure_threshold == 3
    # Same candidate and steps: the canary (off, after the administrator's weights) is kept.
    assert fresh.canary is churn.canary and fresh.canary.status == "off"
    assert fresh.shares == {"stable": 80 / 90 * 100, "candidate": 10 / 90 * 100}


# -- views ---------------------------------------------------------------------------------------------------


def test_views_report_variant_states_shares_and_the_canary():
    router = Router([contract(), three_way()], clock=Clock())
    churn, abc = router.views(not_ready("4"))
    assert churn.name == "churn" and churn.routing_key == "routing_key"
    assert [(v.name, v.model, v.version, v.state, v.share_percent, v.configured_weight, v.weight, v.breaker)
            for v in churn.variants] == [("stable", "churn", "3", "READY", 90.0, 90.0, 90.0, "closed"),
                                         ("candidate", "churn", "4", "UNAVAILABLE", 10.0, 10.0, 10.0, "closed")]
    c = churn.canary
    assert (c.candidate, c.state, c.step, c.steps_percent, c.share_percent, c.failed_windows, c.last_decision) \
        == ("candidate", "running", 0, (10.0, 25.0, 50.0, 100.0), 10.0, 0, "start")
    assert churn.shadow == "churn v5 (20%)" and churn.fallback == "churn_simple" and churn.shadow_queued == 0
    assert abc.canary is None and abc.shadow == "" and abc.fallback == ""
    assert [v.breaker for v in abc.variants] == ["", "", ""]
    router.canary_command("churn", "abort")
    router.set_weights("churn", {"candidate": 30})
    (churn, _) = router.views(all_ready)
    assert churn.canary.state == "off" and churn.canary.last_decision == "weights"
    assert churn.canary.share_percent == 25.0
    assert [(v.weight, v.share_percent) for v in churn.variants] == [(90.0, 75.0), (30.0, 25.0)]
    assert churn.canary.decisions == {"abort": 1, "weights": 1}


def test_a_constant_fallback_is_named_in_the_view():
    table = contract_table()
    table["fallback"] = {"outputs": {"label": 0, "probabilities": [0.5, 0.5]}}
    (view,) = Router([parse_route("churn", table)], clock=Clock()).views(all_ready)
    assert view.fallback == "constant outputs (label, probabilities)"


# -- constant fallback answers -----------------------------------------------------------------------------


def test_constant_outputs_repeat_a_row_per_request_row_with_known_or_inferred_datatypes():
    outputs = {"label": 1, "probabilities": [0.25, 0.75], "name": "fallback", "flag": True}
    tensors = constant_outputs(outputs, 3, {"label": "INT32"}, None)
    by_name = {t.name: t for t in tensors}
    assert [t.name for t in tensors] == ["label", "probabilities", "name", "flag"]
    assert (by_name["label"].datatype, by_name["label"].shape, by_name["label"].data.dtype) == ("INT32", (3,),
                                                                                                np.int32)
    assert by_name["label"].data.tolist() == [1, 1, 1]
    p = by_name["probabilities"]
    assert (p.datatype, p.shape, p.data.dtype) == ("FP32", (3, 2), np.float32)
    assert p.data.tolist() == [[0.25, 0.75]] * 3 and p.data.flags.c_contiguous
    assert (by_name["name"].datatype, by_name["name"].data.tolist()) == ("BYTES", [b"fallback"] * 3)
    assert by_name["name"].data.dtype == object
    assert (by_name["flag"].datatype, by_name["flag"].data.tolist()) == ("BOOL", [True] * 3)


def test_constant_outputs_infer_int64_for_ints():
    (t,) = constant_outputs({"label": [1, 2]}, 2, {}, None)
    assert (t.datatype, t.shape, t.data.dtype, t.data.tolist()) == ("INT64", (2, 2), np.int64, [[1, 2], [1, 2]])


def test_constant_outputs_select_requested_outputs_and_refuse_a_missing_one():
    outputs = {"label": 0, "probabilities": [0.5, 0.5]}
    (t,) = constant_outputs(outputs, 4, {}, ["probabilities"])
    assert t.name == "probabilities" and t.shape == (4, 2)
    assert constant_outputs(outputs, 4, {}, ["label", "embedding"]) is None
    assert [t.name for t in constant_outputs(outputs, 4, {}, [])] == ["label", "probabilities"]


def test_constant_outputs_without_rows_have_no_batch_dimension():
    label, probabilities = constant_outputs({"label": 0, "probabilities": [0.5, 0.5]}, None,
                                            {"probabilities": "FP64"}, None)
    assert (label.shape, label.datatype, label.data.tolist()) == ((), "INT64", 0)
    assert (probabilities.shape, probabilities.datatype, probabilities.data.dtype) == ((2,), "FP64", np.float64)


def test_constant_outputs_to_a_bytes_output_encode_the_text():
    (t,) = constant_outputs({"label": 7}, 2, {"label": "BYTES"}, None)
    assert t.data.tolist() == [b"7", b"7"]


# -- shadow differences --------------------------------------------------------------------------------------


def test_difference_numeric_is_the_largest_absolute_difference():
    assert difference(np.array([1.0, 2.0, 3.0], np.float32), np.array([1.0, 2.5, 2.0], np.float32)) == 1.0
    assert difference(np.array([[1, 5]], np.int64), np.array([[4, 5]], np.int32)) == 3.0
    assert difference(np.array([0.5]), np.array([0.5])) == 0.0
    assert difference(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0


def test_difference_text_is_the_share_of_elements_that_differ():
    a = np.array([b"x", b"y", b"z", b"w"], dtype=object)
    b = np.array([b"x", b"y", b"q", b"q"], dtype=object)
    assert difference(a, b) == 0.5
    assert difference(a, a.copy()) == 0.0


def test_difference_of_different_shapes_is_infinite():
    assert math.isinf(difference(np.zeros((2, 3)), np.zeros((3, 2))))
    assert math.isinf(difference(np.zeros(3), np.zeros((1, 3))))


# -- config ----------------------------------------------------------------------------------------------


def test_the_contract_example_parses():
    cfg = contract()
    assert cfg.name == "churn" and cfg.routing_key == "routing_key"
    assert cfg.variants == (VariantConfig("stable", "churn", "3", 90.0), VariantConfig("candidate", "churn", "4", 10.0))
    assert cfg.canary == CanaryConfig(candidate="candidate", steps_percent=(10.0, 25.0, 50.0, 100.0), interval_s=30.0,
                                      min_requests=100, max_error_ratio=0.01, max_p99_ms=50.0, max_p99_ratio=1.5,
                                      failed_windows_to_rollback=1)
    assert cfg.shadow == ShadowConfig(model="churn", version="5", percent=20.0)
    assert cfg.fallback == FallbackConfig(model="churn_simple")
    assert cfg.variant("candidate").version == "4" and cfg.variant("nope") is None


def test_constant_outputs_fallback_parses():
    table = contract_table()
    table["fallback"] = tomllib.loads('outputs = { label = 0, probabilities = [0.5, 0.5] }')
    fb = parse_route("churn", table).fallback
    assert fb.model is None and fb.outputs == {"label": 0, "probabilities": [0.5, 0.5]}
    assert (fb.breaker_failures, fb.breaker_cooldown_s) == (5, 10.0)


def test_defaults_of_a_minimal_route():
    cfg = parse_route("m", {"variants": [{"version": 2, "weight": 1}, {"model": "other", "weight": 1}]})
    assert cfg.variants == (VariantConfig("v2", "m", "2", 1.0), VariantConfig("other", "other", "", 1.0))
    assert (cfg.routing_key, cfg.canary, cfg.shadow, cfg.fallback) == ("routing_key", None, None, None)
    canary = parse_route("m", {"variants": [{"name": "s", "weight": 1}, {"name": "c", "weight": 0}],
                               "canary": {"candidate": "c"}}).canary
    assert canary == CanaryConfig(candidate="c")


def _set(path: str, value):
    def change(table: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            table = table[p]
        if value is _DELETE:
            del table[last]
        else:
            table[last] = value
    return change


def _both(first, second):
    def change(table: dict) -> None:
        first(table)
        second(table)
    return change


_DELETE = object()


@pytest.mark.parametrize("change,key", [
    (_set("canary.candidate", "nope"), "routes.churn.canary.candidate"),
    (_set("canary.steps_percent", [10, 50, 25, 100]), "routes.churn.canary.steps_percent"),
    (_set("canary.steps_percent", [10, 10, 100]), "routes.churn.canary.steps_percent"),
    (_set("canary.steps_percent", [10, 50]), "routes.churn.canary.steps_percent"),
    (_set("canary.steps_percent", [0, 50, 100]), "routes.churn.canary.steps_percent"),
    (_set("canary.steps_percent", []), "routes.churn.canary.steps_percent"),
    (_set("canary.min_requests", 0), "routes.churn.canary.min_requests"),
    (_set("canary.max_p99_ratio", 0.9), "routes.churn.canary.max_p99_ratio"),
    (_set("canary.max_error_ratio", 1.5), "routes.churn.canary.max_error_ratio"),
    (_set("canary.interval_s", 0), "routes.churn.canary.interval_s"),
    (_set("canary.failed_windows_to_rollback", 0), "routes.churn.canary.failed_windows_to_rollback"),
    (_set("canary.bogus", 1), "routes.churn.canary.bogus"),
    (_set("shadow.percent", 0), "routes.churn.shadow.percent"),
    (_set("shadow.percent", 101), "routes.churn.shadow.percent"),
    (_set("shadow.version", "@x"), "routes.churn.shadow.version"),
    (_set("shadow.bogus", 1), "routes.churn.shadow.bogus"),
    (_set("fallback.outputs", {"label": 0}), "routes.churn.fallback"),
    (_set("fallback.model", _DELETE), "routes.churn.fallback"),
    (_both(_set("fallback.model", _DELETE), _set("fallback.outputs", {"label": {"nested": 1}})),
     "routes.churn.fallback.outputs.label"),
    (_both(_set("fallback.model", _DELETE), _set("fallback.outputs", {})), "routes.churn.fallback.outputs"),
    (_set("fallback.bogus", 1), "routes.churn.fallback.bogus"),
    (_set("bogus", 1), "routes.churn.bogus"),
    (_set("variants", []), "routes.churn.variants"),
])
def test_bad_route_tables_are_refused_by_dotted_key(change, key):
    table = contract_table()
    change(table)
    with pytest.raises(ConfigError) as info:
        parse_route("churn", table)
    assert info.value.key == key


def test_a_canary_needs_another_variant_with_weight():
    table = contract_table()
    table["variants"][0]["weight"] = 0
    with pytest.raises(ConfigError) as info:
        parse_route("churn", table)
    assert info.value.key == "routes.churn.canary.candidate"


def test_with_aliases_turns_an_alias_variant_into_a_companion_model():
    route = parse_route("churn", {"variants": [{"name": "champion", "version": 3, "weight": 90},
                                               {"version": "@challenger", "weight": 10}],
                                  "canary": {"candidate": "challenger"}})
    assert route.variants[1] == VariantConfig("challenger", "churn", "@challenger", 10.0)
    model = ModelConfig(name="churn", source="models:/churn@champion")
    routes, companions = with_aliases([route], [model])
    (out,) = routes
    assert out.variants[0] == route.variants[0]
    assert out.variants[1] == VariantConfig("challenger", "churn@challenger", "", 10.0, alias="@challenger")
    assert out.canary == route.canary
    (companion,) = companions
    assert (companion.name, companion.source, companion.required, companion.version) \
        == ("churn@challenger", "models:/churn@challenger", False, "1")
    assert model.required is True  # the original entry is untouched


def test_with_aliases_refuses_an_alias_of_a_model_without_an_mlflow_source():
    route = parse_route("churn", {"variants": [{"version": 3, "weight": 90}, {"version": "@challenger", "weight": 10}]})
    for models in ([ModelConfig(name="churn")], []):
        with pytest.raises(ConfigError) as info:
            with_aliases([route], models)
        assert info.value.key == "routes.churn.variants[1].version"


def test_with_aliases_leaves_routes_without_aliases_alone():
    route = contract()
    routes, companions = with_aliases([route], [ModelConfig(name="churn")])
    assert routes == (route,) and companions == ()


def test_a_reload_that_changes_the_candidates_version_starts_its_canary_afresh():
    """A promoted canary must not carry over to another version under the same variant name."""
    table = {"variants": [{"name": "stable", "version": 3, "weight": 90},
                          {"name": "candidate", "version": 4, "weight": 10}],
             "canary": {"candidate": "candidate", "steps_percent": [50, 100], "interval_s": 1, "min_requests": 1},
             "fallback": {"model": "simple"}}
    clock = Clock()
    router = Router([parse_route("churn", table)], clock=clock)
    state = router.route("churn")
    router.record(state, "candidate", "OK", 0.001)
    clock.now += 1
    assert router.tick(now=clock.now) == [("churn", "promote")]
    same, _ = router.reload([parse_route("churn", table)])
    assert same[0].canary.status == "promoted" and same[0].shares["candidate"] == 100.0
    assert same[0].breakers["stable"] is state.breakers["stable"]
    table["variants"][1]["version"] = 5
    fresh, _ = router.reload([parse_route("churn", table)])
    assert (fresh[0].canary.status, fresh[0].canary.step, fresh[0].shares["candidate"]) == ("running", 0, 50.0)
    # A new canary, not the promoted one; its decisions are counted on from the promoted one's (an exported
    # counter of the same route and candidate never goes back).
    assert router.stats.canary_decisions("churn", "candidate") == {"promote": 1}
    assert router.views(all_ready)[0].canary.decisions == {"promote": 1}
    assert fresh[0].breakers["stable"] is same[0].breakers["stable"]  # an unchanged variant keeps its breaker
    assert fresh[0].breakers["candidate"] is not same[0].breakers["candidate"]


@pytest.mark.parametrize("table, key", [
    ({"version": 3}, "routes.churn.shadow.version"),  # variant 'stable' itself
    ({}, "routes.churn.shadow.version"),  # the model's default version: maybe a variant
])
def test_a_shadow_that_may_be_a_variant_is_refused(table, key):
    route = {"variants": [{"name": "stable", "version": 3, "weight": 1}], "shadow": table}
    with pytest.raises(ConfigError) as e:
        parse_route("churn", route)
    assert e.value.key == key


@pytest.mark.parametrize("value", [[[0.5, 0.5], [1.0]], 2**70, ["a", 1], [True, 1], []])
def test_constant_outputs_that_no_tensor_can_hold_are_refused(value):
    route = {"variants": [{"name": "stable", "version": 3, "weight": 1}], "fallback": {"outputs": {"y": value}}}
    with pytest.raises(ConfigError) as e:
        parse_route("churn", route)
    assert e.value.key == "routes.churn.fallback.outputs.y"
