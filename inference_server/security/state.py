"""The server's security state: bearer tokens and TLS material, read once at start and once per SIGHUP, and
shared by every front end (docs/architecture.md, "State and its owners"). Both front ends hold the same
`Security`, so a file rewritten between two reads can never leave gRPC and HTTP on different tokens or
certificates."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from inference_server.config.server import ServerConfig
from inference_server.security import auth, tls
from inference_server.security.auth import Auth
from inference_server.security.tls import ServerTls

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Security:
    auth: Auth | None  # None: authentication off
    tls: ServerTls | None  # None: plaintext

    @classmethod
    def load(cls, cfg: ServerConfig) -> Security:
        """At start: ConfigError for a tokens file, certificate or key that cannot be read or is wrong."""
        tokens = auth.load(cfg.auth.tokens_file, cfg.auth.open_metadata)
        files = tls.load(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert and cfg.tls_key else None
        security = cls(tokens, files)
        security.log_auth("")
        return security

    def reload(self, cfg: ServerConfig) -> Security:
        """SIGHUP: every file read again, and checked, before anything changes (ConfigError: what runs stays).
        Turning authentication, TLS or mutual TLS on or off needs a restart and is refused."""
        files = tls.reload(self.tls, cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        return Security(auth.reload(self.auth, cfg.auth.tokens_file, cfg.auth.open_metadata), files)

    def log_auth(self, prefix: str) -> None:
        if self.auth is not None:
            log.log(logging.WARNING if self.auth.tokens.exposed else logging.INFO, "%s%s", prefix,
                    self.auth.describe())
