"""Bearer tokens with scopes, protocol-neutral: the tokens file, the scope each operation needs, and the decision.

The front ends translate: grpc/auth.py (a grpc.aio server interceptor) and http/auth.py (a check in every route's
wrapper) ask `Auth.refusal(operation, authorization_header)` and answer UNAUTHENTICATED / 401 or
PERMISSION_DENIED / 403. Which operation needs which scope is decided here, in OPERATIONS, once for both.

The tokens file: one `SCOPE[,SCOPE...] TOKEN` per line; blank lines and lines starting with `#` are skipped.
Scopes: `infer` (inference, metadata, statistics) and `admin` (the repository, route administration, and
everything `infer` allows). Only SHA-256 digests of the tokens are kept, and no message or log names a token.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inference_server.errors import ConfigError

KEY = "server.auth.tokens_file"
INFER = "infer"
ADMIN = "admin"
SCOPES = (INFER, ADMIN)
MIN_TOKEN_CHARS = 16  # shorter is a mistake (a scope where the token goes, a truncated token) more often than not

# What an operation needs: nothing (health), `metadata` (the `infer` scope unless [server.auth] open_metadata),
# or a scope.
OPEN = "open"
METADATA = "metadata"

# Every operation of both front ends by its gRPC method name (the HTTP routes map to these in http/auth.py).
# An operation missing here needs `admin` (Auth.required): a new RPC is closed until it is placed.
OPERATIONS: Mapping[str, str] = {
    # health, as the KServe protocol defines it: probes carry no credentials
    "ServerLive": OPEN,
    "ServerReady": OPEN,
    "ModelReady": OPEN,
    # metadata
    "ServerMetadata": METADATA,
    "ModelMetadata": METADATA,
    "ModelConfig": METADATA,
    # inference
    "ModelInfer": INFER,
    "ModelStreamInfer": INFER,
    "ModelStatistics": INFER,
    # the model repository, one protected group as in Triton's restricted APIs (the index too: it lists every
    # model the repository holds, loaded or not)
    "RepositoryIndex": ADMIN,
    "RepositoryModelLoad": ADMIN,
    "RepositoryModelUnload": ADMIN,
    # server-side settings and memory registration (unimplemented here; closed should they ever be)
    "SystemSharedMemoryStatus": ADMIN,
    "SystemSharedMemoryRegister": ADMIN,
    "SystemSharedMemoryUnregister": ADMIN,
    "CudaSharedMemoryStatus": ADMIN,
    "CudaSharedMemoryRegister": ADMIN,
    "CudaSharedMemoryUnregister": ADMIN,
    "TraceSetting": ADMIN,
    "LogSettings": ADMIN,
    # route administration (inference_server.admin.RouteAdmin, /v2/routes)
    "RouteStatus": ADMIN,
    "RouteWeights": ADMIN,
    "RouteCanary": ADMIN,
}


class Refusal(enum.Enum):
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no bearer token, or not one of ours: gRPC UNAUTHENTICATED, HTTP 401
    PERMISSION_DENIED = "PERMISSION_DENIED"  # a known token without the scope: PERMISSION_DENIED, HTTP 403


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True, slots=True)
class Tokens:
    """The parsed tokens file: (SHA-256 of the token, its scopes) per token. No token is kept in clear."""
    entries: tuple[tuple[bytes, frozenset[str]], ...]
    source: str = ""
    exposed: bool = False  # the file is readable by other users

    def __repr__(self) -> str:
        return f"Tokens({self.describe()})"

    def counts(self) -> dict[str, int]:
        """Tokens by scope; a token with both scopes counts under each."""
        return {scope: sum(scope in scopes for _, scopes in self.entries) for scope in SCOPES}

    def describe(self) -> str:
        counts = self.counts()
        return f"{len(self.entries)} token(s): {counts[ADMIN]} admin, {counts[INFER]} infer" + (
            f", from {self.source}" if self.source else "") + (
            " (readable by other users: chmod 600 it)" if self.exposed else "")

    def scopes(self, token: str) -> frozenset[str] | None:
        """The token's scopes; None for a token that is not ours. Every entry is compared, in constant time, with
        no early exit: the time taken says nothing about which token matched, or how much of one."""
        presented = _digest(token.encode("utf-8", "surrogatepass"))
        found: frozenset[str] | None = None
        for digest, scopes in self.entries:
            if hmac.compare_digest(presented, digest):
                found = scopes
        return found


def parse_tokens(text: str, source: str = "") -> Tokens:
    """The tokens file's content; a bad line raises ConfigError naming its number (never its token)."""
    entries: list[tuple[bytes, frozenset[str]]] = []
    seen: dict[bytes, int] = {}
    where = f"{source}: " if source else ""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ConfigError(KEY, f"{where}line {number}: expected 'SCOPE[,SCOPE...] TOKEN' (two fields "
                                   f"separated by white space), found {len(fields)} field(s)")
        scope_field, token = fields
        scopes = [s.strip() for s in scope_field.split(",")]
        if not set(scopes) <= set(SCOPES):  # not echoed: with the fields swapped, this one is the token
            raise ConfigError(KEY, f"{where}line {number}: the first field is not a list of scopes (the scopes "
                                   f"are {', '.join(SCOPES)}, separated by commas)")
        if not (token.isascii() and token.isprintable()):
            raise ConfigError(KEY, f"{where}line {number}: the token must be printable ASCII (it travels in an "
                                   "HTTP header and in gRPC metadata)")
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(KEY, f"{where}line {number}: the token is shorter than {MIN_TOKEN_CHARS} characters")
        digest = _digest(token.encode())
        if digest in seen:
            raise ConfigError(KEY, f"{where}line {number}: the same token as line {seen[digest]} (each token "
                                   "appears once, with all its scopes)")
        seen[digest] = number
        entries.append((digest, frozenset(scopes)))
    if not entries:
        raise ConfigError(KEY, f"{where}no tokens (a file being rewritten? write the new one and rename it "
                               "over the old)")
    return Tokens(tuple(entries), source)


def load_tokens(path: Path) -> Tokens:
    """Read and parse the tokens file; ConfigError when it cannot be read or has a bad line."""
    try:
        data = path.read_bytes()
        info = path.stat()
    except OSError as e:
        raise ConfigError(KEY, f"cannot read the tokens file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        number = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(KEY, f"{path}: line {number} is not UTF-8 text") from None
    tokens = parse_tokens(text, str(path))
    return Tokens(tokens.entries, tokens.source, exposed=exposed(info))


def exposed(info: os.stat_result) -> bool:
    """Readable by anyone, or by a group this process is not in. A group of its own is not exposure: Kubernetes
    mounts a Secret 0440 with the pod's fsGroup, the only way a non-root server can read it."""
    if info.st_mode & stat.S_IRWXO:
        return True
    return bool(info.st_mode & stat.S_IRWXG) and info.st_gid not in {os.getgid(), *os.getgroups()}


@dataclass(frozen=True, slots=True)
class Auth:
    """The decision, for one tokens table: replaced whole when the file is re-read (SIGHUP)."""
    tokens: Tokens
    open_metadata: bool = False

    def required(self, operation: str) -> str | None:
        """The scope `operation` (a gRPC method name, OPERATIONS) needs; None when it is open."""
        need = OPERATIONS.get(operation, ADMIN)
        if need == OPEN or (need == METADATA and self.open_metadata):
            return None
        return INFER if need == METADATA else need

    def refusal(self, operation: str, authorization: str | None) -> tuple[Refusal, str] | None:
        """None when a request with this `authorization` header (or metadata) value may run `operation`;
        otherwise how to refuse it and a message for the client."""
        scope = self.required(operation)
        return None if scope is None else self.check(authorization, scope)

    def check(self, authorization: str | None, scope: str) -> tuple[Refusal, str] | None:
        """None when `authorization` ('Bearer TOKEN') holds a token with `scope` (admin holds every scope)."""
        if not authorization:
            return Refusal.UNAUTHENTICATED, "missing bearer token: send the header 'authorization: Bearer TOKEN'"
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Refusal.UNAUTHENTICATED, "the authorization header is not 'Bearer TOKEN'"
        scopes = self.tokens.scopes(token)
        if scopes is None:
            return Refusal.UNAUTHENTICATED, "invalid bearer token"
        if scope in scopes or ADMIN in scopes:
            return None
        return Refusal.PERMISSION_DENIED, f"this token lacks the '{scope}' scope this call needs"

    def describe(self) -> str:
        return (f"authentication on: {self.tokens.describe()}; health open, metadata "
                f"{'open' if self.open_metadata else 'needs infer'}")


def load(tokens_file: Path | None, open_metadata: bool) -> Auth | None:
    """[server.auth] as the front ends apply it: None when authentication is off."""
    return None if tokens_file is None else Auth(load_tokens(tokens_file), open_metadata)


def reload(current: Auth | None, tokens_file: Path | None, open_metadata: bool) -> Auth | None:
    """SIGHUP: the tokens file re-read. Turning authentication on or off needs a restart (a front end without
    it has no check in its path); ConfigError then, and for a file that cannot be read or has a bad line."""
    if (tokens_file is None) != (current is None):
        raise ConfigError(KEY, f"turning authentication {'off' if tokens_file is None else 'on'} needs a restart")
    return load(tokens_file, open_metadata)
