"""Router: the routes' state (weights, canaries, breakers) and which variant serves a request. It decides and
keeps state only (no I/O); the service resolves and leases the chosen version and runs it.

A variant whose version is not ready gets no traffic: its weight goes to the others, by the same sticky
split over the variants that are ready (the keys of the missing variant move; no other key does). When no
variant with a share is ready (say a promoted candidate was unloaded), the ready variants share by their
configured weights.

State has one owner: this router, changed on the event loop (requests, the canary clock, administration,
a SIGHUP reload) and read by the metrics thread through `views()`. Counts are not state: the router writes them
to the `RouteStats` it is given (the App's, for the life of the process), keyed by route, variant and candidate,
so a route state that a reload replaces takes no count with it. It owns the routes' shadows too: made by
the `shadows` factory it is given, kept across a reload that leaves the shadow table as it was, and closed
when their route goes (`close()` closes them all).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from inference_server.breaker import CircuitBreaker
from inference_server.config.routes import MAX_WEIGHT, RouteConfig, VariantConfig
from inference_server.routing.canary import OFF, CanaryConflict, CanaryState, advance, command
from inference_server.routing.shadow import Shadow
from inference_server.routing.split import Split
from inference_server.routing.stats import RouteStats
from inference_server.routing.views import CanaryView, RouteView, VariantView

log = logging.getLogger(__name__)

Ready = Callable[[str, str], bool]
Shadows = Callable[[RouteConfig], Shadow]  # a route's shadow, for a route with a shadow table
MAX_SPLITS = 256  # cached splits (by route, ready variants and shares); cleared past this


class RouteError(ValueError):
    """An administration request that cannot be applied (the message says why)."""


class NoCanary(LookupError):
    """A canary command for a route that has none."""


class RouteState:
    """One route: its config, its weights (configured, or set by an administrator), its canary and breakers."""

    def __init__(self, cfg: RouteConfig, now: float, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.weights = {v.name: v.weight for v in cfg.variants}
        self.canary = CanaryState(window_start=now) if cfg.canary else None
        fb = cfg.fallback
        self.breakers = {v.name: CircuitBreaker(f"route '{cfg.name}' variant '{v.name}'", fb.breaker_failures,
                                                fb.breaker_cooldown_s, clock) for v in cfg.variants} if fb else {}
        self.shadow: Shadow | None = None  # the route's shadow, if it has one (the router's)
        self.shares = self._shares()

    def _shares(self) -> dict[str, float]:
        """Each variant's share in percent: the canary sets the candidate's, the others split the rest by
        their weights."""
        canary = self.cfg.canary
        share = self.canary.share(canary) if self.canary and canary else None
        if share is None or canary is None:  # (a share comes from a canary)
            total = sum(self.weights.values())
            return {n: 100.0 * w / total if total else 0.0 for n, w in self.weights.items()}
        candidate = canary.candidate
        others = {n: w for n, w in self.weights.items() if n != candidate}
        total = sum(others.values())
        out = {n: (100.0 - share) * w / total if total else 0.0 for n, w in others.items()}
        out[candidate] = share
        return out

    def changed(self) -> None:
        self.shares = self._shares()

    def adopt(self, old: RouteState) -> None:
        """A reload kept this route: keep what it had learned where the config still means the same: an
        administrator's weights (the same variants and weights in the file), the canary's progress (the same
        steps, and the same candidate: name, model and version) and each breaker (the same variant)."""
        if [(v.name, v.weight) for v in old.cfg.variants] == [(v.name, v.weight) for v in self.cfg.variants]:
            self.weights = old.weights
        new_canary, old_canary = self.cfg.canary, old.cfg.canary
        if self.canary and old.canary and new_canary and old_canary \
                and new_canary.steps_percent == old_canary.steps_percent \
                and old.cfg.variant(old_canary.candidate) == self.cfg.variant(new_canary.candidate):
            self.canary = old.canary
        if self.cfg.fallback is not None and old.cfg.fallback == self.cfg.fallback:
            for v in self.cfg.variants:
                before = old.cfg.variant(v.name)
                if before is not None and (before.model, before.version) == (v.model, v.version):
                    self.breakers[v.name] = old.breakers[v.name]
        self.changed()


class Router:
    def __init__(self, routes: Sequence[RouteConfig] = (), clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, shadows: Shadows | None = None,
                 stats: RouteStats | None = None) -> None:
        self._clock = clock
        self._rng = rng
        self._shadows = shadows
        self.stats = stats or RouteStats()
        self._routes = {r.name: RouteState(r, clock(), clock) for r in routes}
        self._splits: dict[tuple[str, tuple[tuple[str, float], ...]], Split[str]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # shadows of routes a reload removed, closing
        self._start_shadows(self._routes.values())

    def route(self, model: str) -> RouteState | None:
        return self._routes.get(model)

    def routes(self) -> list[RouteState]:
        return list(self._routes.values())

    def key(self, state: RouteState, parameters: Mapping[str, Any], routing_key: str | None,
            request_id: str) -> str | None:
        """The request parameter the route names, else the routing-key header or metadata, else the request
        id; None: no key (a random split)."""
        value = parameters.get(state.cfg.routing_key)
        return str(value) if value not in (None, "") else routing_key or request_id or None

    def choose(self, state: RouteState, key: str | None, ready: Ready) -> VariantConfig | None:
        """The variant for a routing key, or None when no variant is ready."""
        shares = state.shares
        owners = [v for v in state.cfg.variants if shares[v.name] > 0]
        live = [v for v in owners if ready(v.model, v.version)]
        if live:
            # The split over every variant with a share, so that a key keeps its variant while that one is
            # ready; only the keys of a variant that is not ready are split again over the ready ones (hashed
            # afresh, so that they spread by the shares).
            name = self._split(state, tuple((v.name, shares[v.name]) for v in owners)).choose(key, self._rng)
            if len(live) == len(owners) or any(v.name == name for v in live):
                return state.cfg.variant(name)
            weighted = tuple((v.name, shares[v.name]) for v in live)
            key = None if key is None else f"{name}:{key}"
        else:  # nothing with a share is ready: whatever is ready, by its configured weight
            weighted = tuple((v.name, v.weight) for v in state.cfg.variants
                             if v.weight > 0 and ready(v.model, v.version))
            if not weighted:
                return None
        return state.cfg.variant(self._split(state, weighted).choose(key, self._rng))

    def _split(self, state: RouteState, weighted: tuple[tuple[str, float], ...]) -> Split[str]:
        split_key = (state.cfg.name, weighted)
        split = self._splits.get(split_key)
        if split is None:
            if len(self._splits) >= MAX_SPLITS:
                self._splits.clear()
            split = self._splits[split_key] = Split.of(weighted)
        return split

    def record(self, state: RouteState, variant: str, code: str, duration_s: float | None) -> None:
        """A routed request's outcome ("OK" or an error code; a fallback answer is the variant's failure).
        `duration_s` None: refused without calling the variant (an open breaker): counted, but no latency."""
        self.stats.record(state.cfg.name, variant, code, duration_s)
        canary, canary_cfg = state.canary, state.cfg.canary
        if canary is not None and canary_cfg is not None and canary.status != OFF:  # (one is None: both are)
            window = canary.candidate if variant == canary_cfg.candidate else canary.others
            window.record(code, duration_s)

    # -- the canary clock --------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[tuple[str, str]]:
        """Judge every canary whose window is over; returns (route, decision) for each decision made."""
        now = self._clock() if now is None else now
        made = []
        for state in self._routes.values():
            canary, canary_cfg = state.canary, state.cfg.canary  # (one is None: both are)
            if canary is not None and canary_cfg is not None and advance(canary_cfg, canary, now):
                state.changed()
                self.stats.decided(state.cfg.name, canary_cfg.candidate, canary.decision)
                made.append((state.cfg.name, canary.decision))
                level = logging.WARNING if canary.decision in ("rollback", "fail") else logging.INFO
                log.log(level, "route '%s' canary '%s': %s: %s", state.cfg.name, canary_cfg.candidate,
                        canary.decision, canary.reason)
        return made

    def next_window_s(self, now: float | None = None) -> float | None:
        """Seconds until the next running canary's window ends; None with no canary running."""
        now = self._clock() if now is None else now
        ends = [s.canary.window_start + s.cfg.canary.interval_s - now
                for s in self._routes.values()
                if s.canary is not None and s.cfg.canary is not None and s.canary.status == "running"]
        return max(0.0, min(ends)) if ends else None

    # -- administration ------------------------------------------------------------------------

    def _state(self, name: str) -> RouteState:
        state = self._routes.get(name)
        if state is None:
            raise KeyError(name)
        return state

    def set_weights(self, name: str, weights: Mapping[str, object]) -> RouteState:
        """Replace some or all of a route's weights. A canary that is running or paused owns the candidate's
        share: abort it first. Afterwards the weights decide every share (the canary is off until started)."""
        state = self._state(name)
        if not weights:
            raise RouteError(f"route '{name}': no weights given (its variants: {', '.join(state.weights)})")
        unknown = sorted(set(weights) - set(state.weights))
        if unknown:
            raise RouteError(f"route '{name}' has no variant {', '.join(map(repr, unknown))} "
                             f"(its variants: {', '.join(state.weights)})")
        given: dict[str, float] = {}  # checked: weights come from requests (JSON, protobuf)
        for variant, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= MAX_WEIGHT:
                raise RouteError(f"variant '{variant}': a weight is a number from 0 to {MAX_WEIGHT:g}, got {weight!r}")
            given[variant] = float(weight)
        if state.canary is not None and state.canary.status in ("running", "paused"):
            raise CanaryConflict(f"route '{name}': a canary is {state.canary.status}; abort it before setting weights")
        new = {**state.weights, **given}
        if not any(new.values()):
            raise RouteError(f"route '{name}': at least one variant needs a weight > 0")
        state.weights = new
        if state.canary is not None and state.cfg.canary is not None:  # (one is None: both are)
            state.canary.status = OFF  # the weights now decide the candidate's share too
            state.canary.decide("weights", "weights set by an administrator")
            self.stats.decided(name, state.cfg.canary.candidate, "weights")
        state.changed()
        log.info("route '%s': weights set to %s", name, ", ".join(f"{k} = {v:g}" for k, v in new.items()))
        return state

    def canary_command(self, name: str, action: str) -> RouteState:
        state = self._state(name)
        if state.canary is None or state.cfg.canary is None:
            raise NoCanary(f"route '{name}' has no canary ([routes.{name}.canary] in the config)")
        if action == "start" and not any(w > 0 for n, w in state.weights.items() if n != state.cfg.canary.candidate):
            raise CanaryConflict("no other variant has a weight > 0 to serve the rest: set weights first")
        command(state.canary, action, self._clock())
        state.changed()
        self.stats.decided(name, state.cfg.canary.candidate, state.canary.decision)
        log.info("route '%s' canary '%s': %s: %s", name, state.cfg.canary.candidate,
                 state.canary.decision, state.canary.reason)
        return state

    def reload(self, routes: Iterable[RouteConfig]) -> tuple[list[RouteState], list[RouteState]]:
        """Swap in re-read routes. A route that stays keeps its canary's progress (same candidate and steps),
        an administrator's weights (same variants and weights in the file) and its breakers, and its shadow
        when the shadow table is the same. New shadow tables get their shadows; the shadows still attached to
        old states close (on the running loop). Returns the new states and the old ones."""
        now = self._clock()
        fresh = {r.name: RouteState(r, now, self._clock) for r in routes}
        for name, state in fresh.items():
            old = self._routes.get(name)
            if old is not None:
                state.adopt(old)
                if old.cfg.shadow == state.cfg.shadow:
                    state.shadow, old.shadow = old.shadow, None
        old_states = list(self._routes.values())
        self._routes = fresh
        self._splits = {}
        self._start_shadows(fresh.values())
        for state in old_states:
            if state.shadow is not None:
                task = asyncio.get_running_loop().create_task(state.shadow.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                state.shadow = None
        return list(fresh.values()), old_states

    def _start_shadows(self, states: Iterable[RouteState]) -> None:
        if self._shadows is None:
            return
        for state in states:
            if state.cfg.shadow is not None and state.shadow is None:
                state.shadow = self._shadows(state.cfg)

    async def close(self) -> None:
        """Stop every shadow (copies still queued are dropped and counted)."""
        await asyncio.gather(*(s.shadow.close() for s in self._routes.values() if s.shadow is not None),
                             *self._closing)

    # -- views -----------------------------------------------------------------------------------

    def views(self, ready: Ready) -> list[RouteView]:
        return [view(s, ready, self.stats) for s in list(self._routes.values())]

    def view(self, state: RouteState, ready: Ready) -> RouteView:
        return view(state, ready, self.stats)


def view(state: RouteState, ready: Ready, stats: RouteStats) -> RouteView:
    cfg = state.cfg
    variants = tuple(VariantView(name=v.name, model=v.model, version=v.version, alias=v.alias,
                                 configured_weight=v.weight, weight=state.weights[v.name],
                                 share_percent=state.shares[v.name],
                                 state="READY" if ready(v.model, v.version) else "UNAVAILABLE",
                                 breaker=state.breakers[v.name].state if v.name in state.breakers else "")
                     for v in cfg.variants)
    canary = None
    if state.canary is not None and cfg.canary is not None:
        c = state.canary
        share = c.share(cfg.canary)
        canary = CanaryView(candidate=cfg.canary.candidate, state=c.status, step=c.step,
                            steps_percent=cfg.canary.steps_percent,
                            share_percent=state.shares[cfg.canary.candidate] if share is None else share,
                            failed_windows=c.failed_windows, last_decision=c.decision, last_reason=c.reason,
                            decisions=stats.canary_decisions(cfg.name, cfg.canary.candidate))
    shadow = fallback = ""
    if cfg.shadow is not None:
        shadow = f"{cfg.shadow.model}{' v' + cfg.shadow.version if cfg.shadow.version else ''} " \
                 f"({cfg.shadow.percent:g}%)"
    if cfg.fallback is not None:
        fallback = cfg.fallback.model or f"constant outputs ({', '.join(cfg.fallback.outputs or {})})"
    return RouteView(name=cfg.name, routing_key=cfg.routing_key, variants=variants, canary=canary, shadow=shadow,
                     shadow_queued=running.queued if (running := state.shadow) is not None else 0, fallback=fallback)
