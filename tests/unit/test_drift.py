"""Prediction drift: bins from a reference, PSI of a recent window, references saved and loaded."""

from __future__ import annotations

import json

import numpy as np

from inference_server.observability.drift import DriftMonitor, ModelDrift, OutputDistribution, psi


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift():
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(ref, ref) == 0.0
    small, large = psi(ref, np.array([0.3, 0.25, 0.25, 0.2])), psi(ref, np.array([0.7, 0.1, 0.1, 0.1]))
    assert 0 < small < 0.1 < 0.25 < large
    assert np.isfinite(psi(ref, np.array([1.0, 0.0, 0.0, 0.0])))  # an empty bin is not infinite


def test_values_are_binned_at_the_reference_deciles():
    rng = np.random.default_rng(0)
    dist = OutputDistribution.from_sample(rng.standard_normal((2000, 3)), window_size=3000)
    assert dist.kind == "value" and len(dist.edges) == 9
    np.testing.assert_allclose(dist.reference, 0.1, atol=0.01)
    dist.add(rng.standard_normal((1000, 3)))
    assert dist.score() < 0.05
    dist.add(rng.standard_normal((1000, 3)) + 2)  # the window holds the last 3000 values: all shifted now
    assert dist.score() > 0.25


def test_classes_count_per_class_and_a_class_never_seen_has_its_own_bin():
    dist = OutputDistribution.from_sample(np.array([0, 1, 1, 2] * 50), window_size=100)
    assert dist.kind == "class" and dist.edges.tolist() == [0.0, 1.0, 2.0]
    dist.add(np.array([0, 1, 1, 2] * 25))
    assert dist.score() < 0.01
    dist.add(np.array([7] * 100))  # the window keeps the last 100
    assert dist.score() > 1


def test_the_first_predictions_become_the_reference_then_the_window_fills():
    drift = ModelDrift(reference_size=10, window_size=10)
    assert not drift.add({"y": np.zeros((6, 2), np.float32)})
    assert drift.add({"y": np.ones((4, 2), np.float32)}) and drift.ready
    assert drift.outputs["y"].score() is None  # nothing recent yet
    drift.add({"y": np.zeros((10, 2), np.float32)})
    assert drift.outputs["y"].score() is not None


async def test_monitor_saves_its_reference_and_a_new_one_loads_it(tmp_path):
    path = tmp_path / "reference.json"
    first = DriftMonitor(reference_size=4, window_size=4, reference_path=path)
    first.start()
    first.observe("m", "1", {"label": np.array([0, 1, 1, 2]), "p": np.linspace(0, 1, 8).reshape(4, 2)})
    await first.drained()
    await first.close()
    saved = json.loads(path.read_text())
    assert set(saved["m"]["1"]) == {"label", "p"} and saved["m"]["1"]["label"]["kind"] == "class"
    second = DriftMonitor(reference_size=1000, window_size=4, reference_path=path)
    second.start()
    second.observe("m", "1", {"label": np.array([2, 2, 2, 2]), "p": np.linspace(0, 1, 8).reshape(4, 2)})
    await second.drained()
    scores = {output: score for _, _, output, score in second.scores()}
    await second.close()
    assert scores["label"] > 0.25 and scores["p"] < 0.01  # scored at once: no new reference was needed


async def test_a_full_queue_drops_and_counts_instead_of_waiting():
    monitor = DriftMonitor(queue_size=2)  # not started: nothing drains it
    for _ in range(5):
        monitor.observe("m", "1", {"y": np.zeros((1, 1))})
    assert monitor.dropped == 3
