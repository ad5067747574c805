"""Route administration (the admin scope): read the routes, set weights, command canaries, apply re-read
routes (SIGHUP), and the canary clock. The router decides and keeps the state; this translates its answers
and refusals into the service's errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from inference_server.config.routes import RouteConfig
from inference_server.errors import ErrorCode, InferenceError, invalid
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.routing.canary import CanaryConflict
from inference_server.routing.router import Router, RouteState
from inference_server.routing.views import RouteView

log = logging.getLogger(__name__)


class RouteAdmin:
    def __init__(self, router: Router, registry: ModelRegistry) -> None:
        self._router = router
        self._registry = registry

    def views(self, name: str = "") -> list[RouteView]:
        """Every route's state, or one route's (NOT_FOUND for a name that is not a route)."""
        views = self._router.views(self._registry.ready)
        if not name:
            return views
        found = [v for v in views if v.name == name]
        if not found:
            raise _no_route(name, views)
        return found

    def set_weights(self, name: str, weights: dict[str, float]) -> RouteView:
        return self._administer(name, lambda: self._router.set_weights(name, weights))

    def canary(self, name: str, action: str) -> RouteView:
        """start (resume a paused canary, else restart at its first step), pause or abort."""
        return self._administer(name, lambda: self._router.canary_command(name, action))

    def _administer(self, name: str, change: Callable[[], RouteState]) -> RouteView:
        try:
            state = change()
        except KeyError:
            raise _no_route(name, self._router.views(self._registry.ready)) from None
        except LookupError as e:  # a canary command for a route without a canary
            raise InferenceError(ErrorCode.NOT_FOUND, str(e)) from None
        except CanaryConflict as e:
            raise InferenceError(ErrorCode.FAILED_PRECONDITION, f"route '{name}': {e}") from None
        except ValueError as e:  # RouteError, or an unknown canary action
            raise invalid(str(e)) from None
        return self._router.view(state, self._registry.ready)

    def reload(self, routes: Sequence[RouteConfig]) -> None:
        """Swap in re-read routes (SIGHUP): canary progress, weights set by an administrator and breakers of
        a route that stays are kept; the router starts and stops shadows with their tables."""
        self._router.reload(routes)
        log.info("routes reloaded: %s", ", ".join(r.name for r in routes) or "none")

    async def run_canaries(self) -> None:
        """The canary clock: judge each running canary when its window ends (runs until cancelled)."""
        while True:
            wait = self._router.next_window_s()
            await asyncio.sleep(1.0 if wait is None else min(max(wait, 0.01), 1.0))
            try:
                self._router.tick()
            except Exception:  # a defect must not stop every canary for good: logged, and the clock goes on
                log.exception("canary evaluation failed")


def _no_route(name: str, views: Sequence[RouteView]) -> InferenceError:
    return InferenceError(ErrorCode.NOT_FOUND, f"no route named '{name}' (routes: "
                                               f"{', '.join(v.name for v in views) or 'none'})")
