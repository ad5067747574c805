"""TLS and mutual TLS on both front ends through tritonclient (gRPC `ssl=True` with root certificates, HTTP with
`ssl_options`), against real servers with certificates made here: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and an unrelated CA. A client trusting the wrong CA, a plaintext client, and under
mutual TLS a client without a certificate (or with one another CA signed) all fail; certificates rotate on reload
without a restart (new connections get the new one, open ones keep theirs), and a bad file is refused with the old
certificate still served. The file checks of inference_server/security/tls.py come first, without a server."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import queue
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from tritonclient.utils import InferenceServerException

from inference_server.config.server import ServerConfig
from inference_server.errors import ConfigError
from inference_server.security import tls
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.pki import Authority
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

X = np.arange(8, dtype=np.float32).reshape(1, 8) / 8
CLIENT_TIMEOUT_S = 10


# -- certificates (tests/support/pki.py) ---------------------------------------------------------------------

@dataclass
class Pki:
    directory: Path
    ca: Authority
    other_ca: Authority  # unrelated: trusts nothing of the above, and signs a client certificate of its own
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate the other CA signed
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = Authority.make(directory, "test-ca"), Authority.make(directory, "other-ca")
    server_cert, server_key, _ = ca.issue(directory, "server", server=True)
    client_cert, client_key, _ = ca.issue(directory, "client", server=False)
    stranger_cert, stranger_key, _ = other.issue(directory, "stranger", server=False)
    return Pki(directory, ca, other, server_cert, server_key, client_cert, client_key, stranger_cert, stranger_key)


def served_serial(port: int, ca: Path, alpn: str) -> int:
    """The serial number of the certificate a new TLS connection to 127.0.0.1:port is served (verified against ca)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols([alpn])
    with (socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as sock,
          context.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock):
        der = tls_sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serials(server: ServerThread, ca: Path) -> tuple[int, int]:
    """The serial numbers new connections to the gRPC and the HTTP port are served."""
    return served_serial(server.port, ca, "h2"), served_serial(server.app.http_port, ca, "http/1.1")


# -- tls.py: the files, without a server --------------------------------------------------------------------------

def test_load_reads_the_pair_and_describes_it_by_file_name(pki):
    files = tls.load(pki.server_cert, pki.server_key, None)
    assert not files.mutual and files.certificate_chain == pki.server_cert.read_bytes()
    assert files.describe() == f"TLS on, certificate {pki.server_cert}"
    mutual = tls.load(pki.server_cert, pki.server_key, pki.ca.path)
    assert mutual.mutual and mutual.context.verify_mode == ssl.CERT_REQUIRED
    assert str(pki.ca.path) in mutual.describe() and "mutual TLS" in mutual.describe()
    key_text = pki.server_key.read_text()
    assert "PRIVATE" not in repr(files) and key_text not in repr(files) and key_text not in files.describe()


def test_bad_files_are_config_errors_naming_their_key(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    _, other_key, _ = pki.ca.issue(tmp_path, "another-server", server=True)
    _, encrypted_key, _ = pki.ca.issue(tmp_path, "encrypted", server=True, password=b"secret")
    cases = [
        ((tmp_path / "missing.pem", pki.server_key, None), "server.tls_cert", "cannot read"),
        ((garbage, pki.server_key, None), "server.tls_cert", "no PEM certificate"),
        ((pki.server_key, pki.server_key, None), "server.tls_cert", "no PEM certificate"),
        ((broken, pki.server_key, None), "server.tls_cert", "does not parse"),
        ((pki.server_cert, tmp_path / "missing.key", None), "server.tls_key", "cannot read"),
        ((pki.server_cert, garbage, None), "server.tls_key", "not a PEM private key"),
        ((pki.server_cert, other_key, None), "server.tls_key", "not a PEM private key of the certificate"),
        ((pki.server_cert, encrypted_key, None), "server.tls_key", "encrypted"),  # refused, never a prompt
        ((pki.server_cert, pki.server_key, garbage), "server.tls_client_ca", "no PEM certificate"),
        ((pki.server_cert, pki.server_key, tmp_path / "missing-ca.pem"), "server.tls_client_ca", "cannot read"),
    ]
    for args, key, message in cases:
        with pytest.raises(ConfigError) as e:
            tls.load(*args)
        assert e.value.key == key and message in str(e.value), (args, str(e.value))
        assert "BEGIN" not in str(e.value)


def test_a_ca_bundle_with_comments_in_utf8_is_accepted(pki, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes("# Issuer: CN=Autoritat de Certificació\n".encode() + pki.other_ca.path.read_bytes()
                       + b"\n# the test CA\n" + pki.ca.path.read_bytes())
    files = tls.load(pki.server_cert, pki.server_key, bundle)
    assert files.mutual and len(files.context.get_ca_certs()) == 2


def test_reload_refuses_turning_tls_or_mutual_tls_on_or_off(pki):
    plain = tls.load(pki.server_cert, pki.server_key, None)
    mutual = tls.load(pki.server_cert, pki.server_key, pki.ca.path)
    assert tls.reload(None, None, None, None) is None
    assert tls.reload(plain, pki.server_cert, pki.server_key, None).certificate_chain == plain.certificate_chain
    refusals = [((None, pki.server_cert, pki.server_key, None), "server.tls_cert"),
                ((plain, None, None, None), "server.tls_cert"),
                ((plain, pki.server_cert, pki.server_key, pki.ca.path), "server.tls_client_ca"),
                ((mutual, pki.server_cert, pki.server_key, None), "server.tls_client_ca")]
    for args, key in refusals:
        with pytest.raises(ConfigError, match="needs a restart") as e:
            tls.reload(*args)
        assert e.value.key == key


def test_plaintext_warns_only_off_loopback():
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert tls.plaintext_warning("gRPC", host, 8001) is None, host
    for host in ("0.0.0.0", "", "::", "10.1.2.3", "inference.example.com"):
        warning = tls.plaintext_warning("HTTP", host, 8000)
        assert warning is not None and "plaintext" in warning and "--tls-cert" in warning, host


# -- servers -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tls-models")
    onnx_models.write_model(root, "mlp", onnx_models.mlp([8, 16, 4], seed=1), "[batching]\nmax_batch_size = 8\n")
    return root


def tls_config(repo: Path, cert: Path, key: Path, client_ca: Path | None = None) -> ServerConfig:
    cfg = server_config(repo, http_port=free_port())
    return dataclasses.replace(cfg, tls_cert=cert, tls_key=key, tls_client_ca=client_ca)


@pytest.fixture(scope="module")
def server(repo, pki):
    thread = ServerThread(tls_config(repo, pki.server_cert, pki.server_key)).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def mtls_server(repo, pki):
    thread = ServerThread(tls_config(repo, pki.server_cert, pki.server_key, pki.ca.path)).start()
    yield thread
    thread.stop()


def grpc_client(server: ServerThread, ca: Path | None, cert: Path | None = None, key: Path | None = None,
                ssl_on: bool = True) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.url, ssl=ssl_on, root_certificates=ca and str(ca),
                                            private_key=key and str(key), certificate_chain=cert and str(cert))


def http_client(server: ServerThread, ca: Path | None, cert: Path | None = None, key: Path | None = None,
                ssl_on: bool = True) -> httpclient.InferenceServerClient:
    options: dict[str, str] = {}
    if ca is not None:
        options["ca_certs"] = str(ca)
    if cert is not None and key is not None:
        options.update(certfile=str(cert), keyfile=str(key))
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.app.http_port}", ssl=ssl_on, ssl_options=options,
                                            connection_timeout=CLIENT_TIMEOUT_S, network_timeout=CLIENT_TIMEOUT_S)


def infer_grpc(client: grpcclient.InferenceServerClient) -> np.ndarray:
    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return client.infer("mlp", [x], client_timeout=CLIENT_TIMEOUT_S).as_numpy("y")


def infer_http(client: httpclient.InferenceServerClient) -> np.ndarray:
    x = httpclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return client.infer("mlp", [x]).as_numpy("y")


def infers(server: ServerThread, ca: Path, cert: Path | None = None, key: Path | None = None) -> None:
    """One inference through each front end, each on a new connection, with the same answer."""
    with grpc_client(server, ca, cert, key) as g, http_client(server, ca, cert, key) as h:
        by_grpc, by_http = infer_grpc(g), infer_http(h)
    assert by_grpc.shape == (1, 4)
    np.testing.assert_array_equal(by_grpc, by_http)


def grpc_fails(server: ServerThread, ca: Path | None, cert: Path | None = None, key: Path | None = None,
               ssl_on: bool = True) -> None:
    with grpc_client(server, ca, cert, key, ssl_on) as client, pytest.raises(InferenceServerException) as e:
        infer_grpc(client)
    assert e.value.status() == "StatusCode.UNAVAILABLE", e.value


# tritonclient.http passes on what geventhttpclient raises: ssl.SSLError (an OSError) when the handshake fails,
# HTTPConnectionClosed (an http.client.HTTPException) or a reset (an OSError) when the server hangs up on it.
HTTP_FAILURES = (OSError, http.client.HTTPException)


def http_fails(server: ServerThread, ca: Path | None, cert: Path | None = None, key: Path | None = None,
               ssl_on: bool = True) -> None:
    with http_client(server, ca, cert, key, ssl_on) as client, pytest.raises(HTTP_FAILURES):
        infer_http(client)


def test_inference_over_tls_on_both_front_ends(server, pki):
    infers(server, pki.ca.path)
    assert server.app.cfg.tls_cert == pki.server_cert
    grpc_serial, http_serial = serials(server, pki.ca.path)  # the same certificate on both ports
    assert grpc_serial == http_serial == x509.load_pem_x509_certificate(pki.server_cert.read_bytes()).serial_number


def test_a_client_trusting_another_ca_fails(server, pki):
    grpc_fails(server, pki.other_ca.path)
    http_fails(server, pki.other_ca.path)
    with pytest.raises(ssl.SSLCertVerificationError):
        served_serial(server.app.http_port, pki.other_ca.path, "http/1.1")


def test_a_plaintext_client_against_the_tls_ports_fails(server, pki):
    grpc_fails(server, None, ssl_on=False)
    with http_client(server, None, ssl_on=False) as client, pytest.raises(InferenceServerException) as e:
        infer_http(client)
    assert e.value.status() == "400" and "this port expects TLS" in e.value.message()  # said in plaintext
    infers(server, pki.ca.path)  # and the server still serves


def plaintext_exchange(port: int, request: bytes) -> bytes:
    """What the server sends back to `request` sent in plaintext, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_plaintext_request_on_the_tls_http_port_is_answered_400_saying_the_port_expects_tls(repo, pki, caplog):
    """The first byte of each connection is looked at once: not a TLS handshake but an HTTP method, the answer is a
    plaintext 400 naming https:// (then the connection closes); the warning is rate-limited; bytes that are
    neither get the connection closed, and TLS connections after them are served as before. (A server of its own:
    the warning's rate is per server.)"""
    caplog.set_level(logging.WARNING, logger="inference_server.http")
    server = ServerThread(tls_config(repo, pki.server_cert, pki.server_key)).start()
    try:
        plaintext_requests_are_told_to_use_https(server, pki, caplog)
    finally:
        server.stop()


def plaintext_requests_are_told_to_use_https(server: ServerThread, pki: Pki, caplog) -> None:
    port = server.app.http_port
    for _ in range(3):
        answer = plaintext_exchange(port, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\n"
                                          b"\r\n{}{}")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower(), answer
        assert "this port expects TLS" in json.loads(body)["error"] and "https://" in json.loads(body)["error"]
    warnings = [r.getMessage() for r in caplog.records if "plaintext HTTP request" in r.getMessage()]
    assert len(warnings) == 1 and f"HTTP port {port} serves TLS" in warnings[0], warnings
    assert plaintext_exchange(port, b"\x00\x01\x02 not http, not tls") == b""  # closed, nothing said
    infers(server, pki.ca.path)


def test_mutual_tls_needs_a_client_certificate_the_ca_signed(mtls_server, pki):
    infers(mtls_server, pki.ca.path, pki.client_cert, pki.client_key)
    # no client certificate
    grpc_fails(mtls_server, pki.ca.path)
    http_fails(mtls_server, pki.ca.path)
    # a client certificate another CA signed
    grpc_fails(mtls_server, pki.ca.path, pki.stranger_cert, pki.stranger_key)
    http_fails(mtls_server, pki.ca.path, pki.stranger_cert, pki.stranger_key)
    infers(mtls_server, pki.ca.path, pki.client_cert, pki.client_key)


# -- rotation ------------------------------------------------------------------------------------------------------

def reload(server: ServerThread, cfg: ServerConfig) -> bool:
    """What SIGHUP runs (App.reload), with `cfg` as the re-read config, on the server's loop."""
    server.app._reread = lambda: cfg
    done: queue.Queue = queue.Queue()
    server.loop.call_soon_threadsafe(lambda: done.put(server.app.reload()))
    return done.get(timeout=10)


def security_reload(server: ServerThread, cfg: ServerConfig) -> BaseException | None:
    """The security state's re-read (one for every front end), on the server's loop; what it raised."""
    done: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            server.app.security.reload(cfg)
            done.put(None)
        except BaseException as e:  # handed to the test thread
            done.put(e)

    server.loop.call_soon_threadsafe(run)
    return done.get(timeout=10)


def test_certificates_rotate_without_a_restart_and_a_bad_key_is_refused(repo, pki, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cert, key, first = pki.ca.issue(tmp_path, "rotating", server=True, serial=1001)
    server = ServerThread(tls_config(repo, cert, key)).start()
    try:
        ports, front_ends = (server.port, server.app.http_port), list(server.app.front_ends)
        assert serials(server, pki.ca.path) == (first, first)
        started = [r.getMessage() for r in caplog.records if "TLS on" in r.getMessage()]
        assert started == [f"gRPC port {server.port}: TLS on, certificate {cert}",
                           f"HTTP port {server.app.http_port}: TLS on, certificate {cert}"]
        assert "plaintext" not in caplog.text
        # clients connected before the rotation
        old_grpc, old_http = grpc_client(server, pki.ca.path), http_client(server, pki.ca.path)
        infer_grpc(old_grpc), infer_http(old_http)

        # A new certificate (another key, serial and name) at the same paths, then SIGHUP.
        new_cert, new_key, second = pki.ca.issue(tmp_path, "rotated", server=True, serial=2002)
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        assert reload(server, server.app.cfg)
        assert serials(server, pki.ca.path) == (second, second)
        infers(server, pki.ca.path)  # new clients, new connections
        infer_grpc(old_grpc), infer_http(old_http)  # connections opened before keep working
        assert "SIGHUP: gRPC certificates re-read" in caplog.text and "SIGHUP: HTTP certificates re-read" in caplog.text
        # never restarted: the same front ends on the same ports
        assert (server.port, server.app.http_port) == ports and server.app.front_ends == front_ends

        # A garbage key: the reload is refused (naming the key), and the rotated certificate keeps serving.
        key.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
        assert not reload(server, server.app.cfg)
        assert "server.tls_key" in caplog.text
        error = security_reload(server, server.app.cfg)
        assert isinstance(error, ConfigError) and error.key == "server.tls_key", error
        assert serials(server, pki.ca.path) == (second, second)
        infers(server, pki.ca.path)
        old_grpc.close(), old_http.close()
        # no key material in any line the server logged
        key_body = "".join(new_key.read_text().splitlines()[1:-1])
        assert key_body[:32] not in caplog.text and "garbage" not in caplog.text
    finally:
        server.stop()


def test_a_new_client_ca_replaces_the_old_one_on_reload(repo, pki):
    """Mutual TLS with the client CA rotated to the other CA: its clients get in, the first CA's no longer do (the
    new CA replaces the old one rather than joining it)."""
    server = ServerThread(tls_config(repo, pki.server_cert, pki.server_key, pki.ca.path)).start()
    try:
        infers(server, pki.ca.path, pki.client_cert, pki.client_key)
        assert reload(server, dataclasses.replace(server.app.cfg, tls_client_ca=pki.other_ca.path))
        infers(server, pki.ca.path, pki.stranger_cert, pki.stranger_key)
        grpc_fails(server, pki.ca.path, pki.client_cert, pki.client_key)
        http_fails(server, pki.ca.path, pki.client_cert, pki.client_key)
        # turning mutual TLS off is refused, and clients still need a certificate
        assert not reload(server, dataclasses.replace(server.app.cfg, tls_client_ca=None))
        grpc_fails(server, pki.ca.path)
        http_fails(server, pki.ca.path)
    finally:
        server.stop()
