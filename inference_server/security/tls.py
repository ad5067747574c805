"""TLS from PEM files for both front ends, protocol-neutral: the server's certificate (chain) and private key and,
for mutual TLS, the CA whose signature clients' certificates must carry.

Everything is read and checked here (the certificate parses, the key is the certificate's key and is not
encrypted, the CA parses), so a bad file is a ConfigError naming its key, at start and on SIGHUP, and never a
handshake that fails later. gRPC takes the PEM bytes (grpc/server.py), HTTP the ssl.SSLContext built from the same
files (http/transport.py). No message or log line shows key material; only file names.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from inference_server.errors import ConfigError

CERT_KEY = "server.tls_cert"
KEY_KEY = "server.tls_key"
CLIENT_CA_KEY = "server.tls_client_ca"
MAX_PEM_BYTES = 1 << 20  # far above any certificate chain; a larger file is the wrong file (or /dev/zero)


@dataclass(frozen=True)
class ServerTls:
    """What one reading of the files gave: the PEM bytes (for gRPC) and a server SSLContext (for HTTP)."""

    cert_file: Path
    client_ca_file: Path | None
    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False)  # PEM CA certificate(s); None: clients are not asked for one
    context: ssl.SSLContext = field(repr=False)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def describe(self) -> str:
        line = f"TLS on, certificate {self.cert_file}"
        if self.client_ca_file is not None:
            line += f"; mutual TLS: clients must present a certificate signed by {self.client_ca_file}"
        return line


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    """Asked for when the key is encrypted: refuse rather than let OpenSSL prompt on the terminal."""
    raise _EncryptedKey


def _read(path: Path, key: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(key, f"{path} is larger than {MAX_PEM_BYTES >> 20} MiB: not a PEM file")
    return data


PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


def _certificates(data: bytes, path: Path, key: str) -> str:
    """The file's PEM certificates (without the comments CA bundles carry, in any encoding), once OpenSSL has
    parsed every one of them."""
    blocks = PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ConfigError(key, f"{path} holds no PEM certificate")
    try:
        text = b"\n".join(blocks).decode("ascii")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as e:
        reason = getattr(e, "reason", None) or "not base64"
        raise ConfigError(key, f"{path} holds a PEM certificate that does not parse ({reason})") from None
    return text


def load(cert: Path, key: Path, client_ca: Path | None) -> ServerTls:
    """Read and check the files; raises ConfigError naming the key of the file at fault."""
    chain = _read(cert, CERT_KEY)
    private_key = _read(key, KEY_KEY)
    ca = _read(client_ca, CLIENT_CA_KEY) if client_ca is not None else None
    _certificates(chain, cert, CERT_KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(KEY_KEY, f"{key} is encrypted: give it unencrypted (readable by the server only)") from None
    except (ssl.SSLError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(KEY_KEY, f"{key} is not a PEM private key of the certificate in {cert} ({reason})") from None
    except OSError as e:
        raise ConfigError(KEY_KEY, f"cannot read {key}: {e.strerror or e}") from None
    if ca is not None:  # both front ends trust exactly the certificates parsed here
        assert client_ca is not None
        ca_text = _certificates(ca, client_ca, CLIENT_CA_KEY)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=ca_text)
        ca = ca_text.encode("ascii")
    # The context was loaded from the paths, gRPC gets the bytes: both must be the same files' contents (a
    # certificate being rewritten while it is read is refused, and the next SIGHUP reads it whole).
    if _read(cert, CERT_KEY) != chain or _read(key, KEY_KEY) != private_key:
        raise ConfigError(CERT_KEY, f"{cert} or {key} changed while being read; send SIGHUP again")
    return ServerTls(cert, client_ca, chain, private_key, ca, context)


def reload(current: ServerTls | None, cert: Path | None, key: Path | None, client_ca: Path | None) -> ServerTls | None:
    """SIGHUP: the files read again. Whether TLS and mutual TLS are on is fixed when the port opens: a change to
    either needs a restart, and is refused rather than ignored (a server that stays plaintext, or stops asking
    for client certificates, when told otherwise is worse than one that says no)."""
    if cert is None or key is None:
        if current is not None:
            raise ConfigError(CERT_KEY, "turning TLS off needs a restart")
        return None
    if current is None:
        raise ConfigError(CERT_KEY, "turning TLS on needs a restart")
    if current.mutual != (client_ca is not None):
        raise ConfigError(CLIENT_CA_KEY, f"turning mutual TLS {'off' if current.mutual else 'on'} needs a restart")
    return load(cert, key, client_ca)


def is_loopback(host: str) -> bool:
    """Only this machine can connect: localhost, 127.0.0.0/8, ::1 (an empty host or 0.0.0.0 is every address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_warning(front_end: str, host: str, port: int) -> str | None:
    """The start-up warning for plaintext on an address other machines reach; None on loopback."""
    if is_loopback(host):
        return None
    return (f"{front_end} serves plaintext on {host or '*'}:{port}, which other machines can reach: requests and "
            f"tokens cross the network readable; give --tls-cert and --tls-key")
