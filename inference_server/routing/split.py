"""Weighted, sticky splits: pure functions, no I/O.

A routing key is hashed (BLAKE2b, stable across processes and restarts) into one of 10,000 buckets; the
variants own consecutive bucket ranges in their configured order, sized by weight. The same key always lands
in the same variant, and a weight change moves only the keys whose buckets change owner: going from 90/10 to
80/20 moves exactly the keys of buckets 8,000-8,999.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

BUCKETS = 10_000
V = TypeVar("V", bound=Hashable)  # a variant's label


def bucket(key: str) -> int:
    """The key's bucket in [0, BUCKETS)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


@dataclass(frozen=True, slots=True)
class Split(Generic[V]):
    """Variants (any hashable labels) and the upper bucket bound of each, cumulative."""
    variants: tuple[V, ...]
    bounds: tuple[int, ...]

    @classmethod
    def of(cls, weighted: Sequence[tuple[V, float]]) -> Split[V]:
        """Bucket ranges proportional to the weights (largest remainder, so they add up to BUCKETS exactly).
        Variants of weight 0 own no bucket; all weights 0 is an empty split."""
        live = [(v, w) for v, w in weighted if w > 0]
        total = sum(w for _, w in live)
        if not live:
            return cls((), ())
        exact = [w * BUCKETS / total for _, w in live]
        sizes = [int(x) for x in exact]
        for i in sorted(range(len(live)), key=lambda i: exact[i] - sizes[i], reverse=True)[:BUCKETS - sum(sizes)]:
            sizes[i] += 1
        bounds, running = [], 0
        for size in sizes:
            running += size
            bounds.append(running)
        return cls(tuple(v for v, _ in live), tuple(bounds))

    def choose(self, key: str | None, rng: random.Random | None = None) -> V:
        """The variant for a key; with no key, a random bucket (so the weights still hold on average)."""
        if not self.variants:
            raise LookupError("no variant has any weight")
        b = bucket(key) if key is not None else (rng or random).randrange(BUCKETS)
        return self.variants[bisect_right(self.bounds, b)]
