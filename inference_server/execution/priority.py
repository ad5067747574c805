"""PriorityQueue: Triton's dynamic batcher queue with priority levels and queue policies (docs/architecture.md,
"The batcher's queue").

One FIFO per priority level, served in level order (1 first). A level's queue is its waiting requests, then those
its DELAY policy moved behind them; its policy (QueuePolicy) bounds its size and sets how long a request may wait.
The batcher (execution/batching.py) uses it in place of its one plain deque when a model has priority levels or
queue timeouts: the same operations (append, popleft, remove, len, iteration in serving order), plus the level
decisions, which are made here only:
- which level a request's `priority` means (Triton's InferenceRequest::SetPriority: 0 and values above
  priority_levels mean the default level);
- whether a level is full (its own max_queue_size);
- when a request times out (its level's default_timeout_microseconds; its own `timeout` only where the policy
  allows an override, and only to shorten it).
Levels with no policy of their own are made when a request first needs one and dropped once empty, so a client
naming many levels leaves nothing behind.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from inference_server.config.model import QueueConfig, QueuePolicy


class Queued(Protocol):
    level: int
    arrival: float


T = TypeVar("T", bound=Queued)


class _Level(Generic[T]):
    __slots__ = ("delayed", "policy", "waiting")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.waiting: deque[T] = deque()
        self.delayed: deque[T] = deque()  # timed out under DELAY: behind every waiting request of the level

    def __len__(self) -> int:
        return len(self.waiting) + len(self.delayed)


class PriorityQueue(Generic[T]):
    def __init__(self, cfg: QueueConfig, max_queue_size: int) -> None:
        """`max_queue_size`: the default queue policy's bound (the model's, BatchingConfig's)."""
        self.priority_levels = cfg.priority_levels
        self.default_level = cfg.default_priority_level  # 0 without levels: the one queue
        self.timeouts = cfg.timeouts  # False: a request's `timeout` is its own deadline (the batcher's)
        self._default = cfg.default_policy(max_queue_size)
        self._policies: dict[int, QueuePolicy] = dict(cfg.priority_queue_policy)
        self._kept = {self.default_level, *self._policies}  # levels that stay when empty (reported as gauges)
        self._levels: dict[int, _Level[T]] = {}
        self._order: list[int] = []  # the levels in _levels, ascending: the serving order
        self._size = 0
        for level in sorted(self._kept):
            self._add(level)

    # -- the level decisions -------------------------------------------------------------------------------

    def level(self, priority: int) -> int:
        """The level a request's `priority` parameter puts it in (Triton's rule)."""
        return priority if 0 < priority <= self.priority_levels else self.default_level

    def policy(self, level: int) -> QueuePolicy:
        return self._policies.get(level, self._default)

    def full(self, level: int) -> int:
        """The level's max_queue_size when it holds that many requests already, else 0."""
        bound = self.policy(level).max_queue_size
        found = self._levels.get(level)
        return bound if bound and found is not None and len(found) >= bound else 0

    def timeout_us(self, level: int, requested_us: int | None) -> int:
        """How long a request may wait at `level` (0: no limit): the level's default, or the request's own
        `timeout` where the policy allows an override and it is shorter (Triton's PolicyQueue::Enqueue: with no
        default there is nothing to shorten, so the request's is not used either)."""
        policy = self.policy(level)
        limit = policy.default_timeout_us
        if policy.allow_timeout_override and requested_us and requested_us < limit:
            return requested_us
        return limit

    # -- the queue -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        """Every queued request in serving order: by level, each level's waiting requests, then its delayed ones."""
        for level in self._order:
            found = self._levels[level]
            yield from found.waiting
            yield from found.delayed

    def __getitem__(self, index: int) -> T:
        """The head only (index 0): the request served next."""
        if index != 0 or not self._size:
            raise IndexError(index)
        return next(iter(self))

    def append(self, item: T) -> None:
        found = self._levels.get(item.level)
        if found is None:
            found = self._add(item.level)
        found.waiting.append(item)
        self._size += 1

    def popleft(self) -> T:
        for level in self._order:
            found = self._levels[level]
            if found.waiting or found.delayed:
                item = found.waiting.popleft() if found.waiting else found.delayed.popleft()
                self._size -= 1
                self._drop_if_empty(level, found)
                return item
        raise IndexError("pop from an empty queue")

    def remove(self, item: T) -> None:
        found = self._levels[item.level]
        try:
            found.waiting.remove(item)
        except ValueError:
            found.delayed.remove(item)
        self._size -= 1
        self._drop_if_empty(item.level, found)

    def delay(self, item: T) -> None:
        """A queued request timed out under DELAY: behind every other request of its level."""
        found = self._levels[item.level]
        found.waiting.remove(item)
        found.delayed.append(item)

    def oldest(self, count: int) -> float:
        """The earliest arrival among the first `count` requests (the batch being formed): its queue delay runs
        from there, as Triton's pending batch does."""
        oldest = float("inf")
        for i, item in enumerate(self):
            if i == count:
                break
            oldest = min(oldest, item.arrival)
        return oldest

    def sizes(self) -> list[tuple[int, int]]:
        """(level, queued requests) for the kept levels and any other that holds requests, by level."""
        levels = dict(self._levels)  # one C-level copy: the metrics thread reads while the event loop changes it
        return [(level, len(found)) for level, found in sorted(levels.items())]

    def _add(self, level: int) -> _Level[T]:
        found = self._levels[level] = _Level(self.policy(level))
        bisect.insort(self._order, level)
        return found

    def _drop_if_empty(self, level: int, found: _Level[T]) -> None:
        if not found.waiting and not found.delayed and level not in self._kept:
            del self._levels[level]
            self._order.remove(level)


def queue_for(cfg: QueueConfig, max_queue_size: int) -> PriorityQueue | None:
    """The policy queue a model's batcher needs, or None: one level and no queue timeouts keep the plain deque."""
    return PriorityQueue(cfg, max_queue_size) if cfg.needed else None
