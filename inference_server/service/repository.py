"""The model repository as clients drive it (explicit mode): RepositoryIndex, RepositoryModelLoad and
RepositoryModelUnload, on the model manager; refused while the server drains."""

from __future__ import annotations

from inference_server.errors import ErrorCode, InferenceError, ModelLoadError
from inference_server.lifecycle.manager import ModelManager
from inference_server.lifecycle.mlflow_source import RegistryUnreachable
from inference_server.lifecycle.registry import IndexEntry
from inference_server.service.health import Gate


class RepositoryAdmin:
    def __init__(self, manager: ModelManager, gate: Gate) -> None:
        self._manager = manager
        self._gate = gate

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self._manager.index(ready_only)

    async def load(self, name: str, *, config: str | None = None, files: dict[str, bytes] | None = None,
                   version: str | None = None) -> None:
        """Load, or reload, a model. `config`: a Triton ModelConfig as JSON text, replacing the model's. A
        failure leaves what served serving and says why."""
        self._gate.check_open()
        try:
            await self._manager.load(name, config=config, files=files, version=version)
        except ModelLoadError as e:
            code = ErrorCode.UNAVAILABLE if isinstance(e, RegistryUnreachable) else ErrorCode.INVALID_ARGUMENT
            raise InferenceError(code, f"failed to load '{name}': {e}") from None

    async def unload(self, name: str, version: str | None = None, *, dependents: bool = False) -> None:
        """Unload a model (or one version); `dependents`: Triton's unload_dependents (an ensemble's composing models
        that its load brought in go too, where no other loaded ensemble uses them)."""
        self._gate.check_open()
        await self._manager.unload(name, version, dependents=dependents)
