"""ModelRegistry: which versions serve, which one an empty version means, and the state of every other one.

The routing state has one owner (this class) and changes only on the event loop, in synchronous steps:
`publish` replaces a model's serving set and its default pointer at once, so a request is routed either
before or after a swap, never in between. A request routed here takes its lease in the same step
(`resolve`), so a version leaving the serving set can count exactly what it still owes.

The metrics thread reads `snapshot()`: an immutable tuple replaced whole on every change, never a dict the
loop may be changing.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference_server.config.model import version_key
from inference_server.errors import ErrorCode, InferenceError, unavailable
from inference_server.lifecycle.version import ModelVersion, State


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of RepositoryIndex: a version (or, with version "", a model with no version loaded)."""
    name: str
    version: str
    state: str
    reason: str


NOT_LOADED = "not loaded"
EVICTED = "evicted"  # unloaded to keep within the model budget (lifecycle/budget.py)
MAX_NESTING = 8  # ensembles within ensembles that readiness follows (ensembles that contain each other never load)


class Lease:
    """A request's hold on the version it runs on: taken by `ModelRegistry.lease`, given back on leaving the
    `with` block, however it is left (the version drains only once every lease is back)."""

    __slots__ = ("model",)

    def __init__(self, model: ModelVersion) -> None:
        self.model = model

    def __enter__(self) -> ModelVersion:
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.release()
UNLOADED = "unloaded"


def _unknown(name: str, version: str = "") -> InferenceError:
    which = f"'{name}' version {version}" if version else f"'{name}'"
    return InferenceError(ErrorCode.NOT_FOUND, f"Request for unknown model: {which} is not found")


class ModelRegistry:
    def __init__(self) -> None:
        self._serving: dict[str, dict[str, ModelVersion]] = {}  # name -> version -> READY version
        self._default: dict[str, ModelVersion] = {}  # the version an empty version string means
        self._status: dict[str, dict[str, tuple[State, str]]] = {}  # versions not serving: state, reason
        self._model_reason: dict[str, str] = {}  # why a known model has no version serving
        self._draining: set[ModelVersion] = set()
        self._snapshot: tuple[ModelVersion, ...] = ()
        self._index: tuple[IndexEntry, ...] = ()

    # -- reads (requests, metadata, health) -----------------------------------------------------

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version a request names (or the default one), with a lease taken on it."""
        model = self._lookup(name, version)
        model.acquire()
        return model

    def lease(self, name: str, version: str = "") -> Lease:
        """`with registry.lease(name, version) as model:` the version a request names, released at the end.
        Resolved when called: NOT_FOUND / UNAVAILABLE are raised before the `with` block is entered."""
        return Lease(self.resolve(name, version))

    def find(self, name: str, version: str = "") -> ModelVersion:
        """A serving version, for metadata and config (no lease)."""
        return self._lookup(name, version)

    def _lookup(self, name: str, version: str) -> ModelVersion:
        serving = self._serving.get(name)
        if serving:
            model = serving.get(version) if version else self._default.get(name)
            if model is not None:
                return model
        if version:
            state, reason = self._status.get(name, {}).get(version, (None, ""))
            if state is State.LOADING or state is State.UNLOADING:
                raise unavailable(f"model '{name}' version {version} is {state.value.lower()}")
            if state is State.UNAVAILABLE and reason != UNLOADED:
                raise unavailable(f"model '{name}' version {version} is unavailable: {reason}")
            raise _unknown(name, version)
        model_reason = self._model_reason.get(name)
        if model_reason is None and name not in self._status:
            raise _unknown(name)
        if model_reason == EVICTED:
            raise unavailable(f"model '{name}' was evicted to keep within the model budget: load it again")
        if model_reason in (None, NOT_LOADED, UNLOADED):
            loading = [v for v, (s, _) in self._status.get(name, {}).items() if s is State.LOADING]
            if loading:
                raise unavailable(f"model '{name}' is loading (version {', '.join(loading)})")
            raise InferenceError(ErrorCode.NOT_FOUND,
                                 f"Request for unknown model: '{name}' is {model_reason or UNLOADED}")
        raise unavailable(f"model '{name}' is unavailable: {model_reason}")

    def ready(self, name: str, version: str = "", depth: int = 0) -> bool:
        """A version serves; an ensemble only while every composing model its steps run on does (as Triton)."""
        serving = self._serving.get(name)
        if not serving:
            return False
        model = serving.get(version) if version else self._default.get(name)
        if model is None:
            return False
        ensemble = model.config.ensemble
        return ensemble is None or depth < MAX_NESTING and all(
            self.ready(step.model_name, step.model_version, depth + 1) for step in ensemble.steps)

    def versions(self, name: str) -> list[str]:
        """The serving versions of a model, oldest first."""
        return sorted(self._serving.get(name, {}), key=version_key)

    def serving_versions(self, name: str) -> dict[str, ModelVersion]:
        """A model's serving versions by number (a copy: the caller may build the next serving set from it)."""
        return dict(self._serving.get(name, {}))

    def serving(self) -> list[ModelVersion]:
        return [m for versions in self._serving.values() for m in versions.values()]

    def snapshot(self) -> tuple[ModelVersion, ...]:
        """Every version that serves or drains; safe to read from another thread."""
        return self._snapshot

    def index_snapshot(self) -> tuple[IndexEntry, ...]:
        """Every version's state (RepositoryIndex rows); safe to read from another thread."""
        return self._index

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        entries = list(self._index)
        return [e for e in entries if e.state == State.READY.value] if ready_only else entries

    def _build_index(self) -> tuple[IndexEntry, ...]:
        entries = []
        draining = {m.name for m in self._draining}
        for name in sorted(set(self._serving) | set(self._status) | set(self._model_reason) | draining):
            serving = self._serving.get(name, {})
            rows = {v: (State.READY, "") for v in serving}
            for version, status in self._status.get(name, {}).items():
                rows.setdefault(version, status)
            for model in self._draining:
                if model.name == name:
                    rows.setdefault(model.version, (State.UNLOADING, ""))
            for version in sorted(rows, key=version_key):
                state, reason = rows[version]
                entries.append(IndexEntry(name, version, state.value, reason))
            if not rows:
                entries.append(IndexEntry(name, "", State.UNAVAILABLE.value, self._model_reason.get(name, UNLOADED)))
        return tuple(entries)

    # -- changes (the model manager, on the event loop) -----------------------------------------

    def set_status(self, name: str, version: str, state: State, reason: str = "") -> None:
        """The state of a version that is not serving (loading, unloading, failed)."""
        self._status.setdefault(name, {})[version] = (state, reason)
        self._refresh()

    def clear_status(self, name: str, version: str) -> None:
        statuses = self._status.get(name)
        if statuses is not None:
            statuses.pop(version, None)
            if not statuses:
                del self._status[name]
        self._refresh()

    def clear_statuses(self, name: str, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Forget the state of every version of a model that is not in `keep`."""
        for version in [v for v in self._status.get(name, {}) if v not in keep]:
            self.clear_status(name, version)

    def set_model_reason(self, name: str, reason: str | None) -> None:
        """Why a known model has no version serving (None: forget the model when nothing else names it)."""
        if reason is None:
            self._model_reason.pop(name, None)
        else:
            self._model_reason[name] = reason
        self._refresh()

    def publish(self, name: str, serving: dict[str, ModelVersion]) -> list[ModelVersion]:
        """Make `serving` the model's serving set and its newest version the default, in one step. Returns the
        versions that left the set: they take no new request and are now the caller's to drain."""
        old = self._serving.get(name, {})
        left = [m for v, m in old.items() if serving.get(v) is not m]
        if serving:
            self._serving[name] = dict(serving)
            self._default[name] = serving[max(serving, key=version_key)]
            for version in serving:
                self.clear_status(name, version)
        else:
            self._serving.pop(name, None)
            self._default.pop(name, None)
        for model in left:
            model.retire()  # no new lease from here on
            self._draining.add(model)
        self._refresh()
        return left

    def drained(self, model: ModelVersion) -> None:
        self._draining.discard(model)
        self._refresh()

    def _refresh(self) -> None:
        """Rebuild what other threads read (each replaced whole, so a reader never sees a half change)."""
        serving = self.serving()
        # A version reloaded from a new file drains under the same name and number as its successor: the
        # metrics show the serving one only (two series with the same labels would be one too many).
        names = {(m.name, m.version) for m in serving}
        self._snapshot = tuple(serving) + tuple(m for m in self._draining if (m.name, m.version) not in names)
        self._index = self._build_index()

    def all_ready(self, names: set[str]) -> bool:
        return all(self.ready(name) for name in names)
