"""Weighted sticky splits: distribution, stickiness, and how little moves when weights change."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from inference_server.routing.split import BUCKETS, Split, bucket

KEYS = [f"user-{i}" for i in range(10_000)]


def test_ten_thousand_keys_land_within_two_percent_of_the_weights():
    split = Split.of([("stable", 90), ("candidate", 10)])
    counts = Counter(split.choose(k) for k in KEYS)
    assert abs(counts["stable"] / len(KEYS) - 0.90) <= 0.02
    assert abs(counts["candidate"] / len(KEYS) - 0.10) <= 0.02


def test_the_same_key_always_gets_the_same_variant():
    split = Split.of([("a", 50), ("b", 30), ("c", 20)])
    first = [split.choose(k) for k in KEYS]
    assert [split.choose(k) for k in KEYS] == first
    assert [Split.of([("a", 50), ("b", 30), ("c", 20)]).choose(k) for k in KEYS] == first  # stable hash


def test_moving_from_90_10_to_80_20_moves_exactly_the_keys_that_must_move():
    before = Split.of([("stable", 90), ("candidate", 10)])
    after = Split.of([("stable", 80), ("candidate", 20)])
    moved = [k for k in KEYS if before.choose(k) != after.choose(k)]
    # Exactly the keys whose bucket changed owner: stable's 8,000-8,999 went to the candidate; none came back.
    assert moved == [k for k in KEYS if 8000 <= bucket(k) < 9000]
    assert all(before.choose(k) == "stable" and after.choose(k) == "candidate" for k in moved)
    assert abs(len(moved) / len(KEYS) - 0.10) <= 0.02


def test_bucket_ranges_add_up_and_zero_weights_own_nothing():
    split = Split.of([("a", 1), ("b", 1), ("c", 1), ("off", 0)])
    assert split.bounds[-1] == BUCKETS and "off" not in split.variants
    assert sorted(b - a for a, b in zip((0, *split.bounds), split.bounds, strict=False)) == [3333, 3333, 3334]
    with pytest.raises(LookupError):
        Split.of([("a", 0)]).choose("k")


def test_no_key_splits_at_random_by_the_weights():
    split = Split.of([("stable", 90), ("candidate", 10)])
    rng = random.Random(7)
    counts = Counter(split.choose(None, rng) for _ in range(10_000))
    assert abs(counts["candidate"] / 10_000 - 0.10) <= 0.02
