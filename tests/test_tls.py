"""TLS on every listener and to https targets (reference 1.2, 1.4; quirk Q9), SIGHUP reload.

Certificates are made at test time (tests/support/certs.py). Three layers:
- contexts from `cfproxy.tls`, handshaken in memory (MemoryBIO pairs: no sockets);
- the real process (ProxyProcess): public and API listeners over TLS, client certs, reload;
- https targets through the proxy (needs the data path).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509

from cfproxy.config import Config
from cfproxy.tls import (
    TLSConfigError,
    build_tls,
    default_ciphers,
    parse_ssl_protocol,
    validate_tls_files,
)
from tests.support.backends import EchoBackend, wait_until
from tests.support.certs import make_certs
from tests.support.proxy_process import TOKEN, ProxyProcess


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """An unrelated CA with its own server/client certificates."""
    return make_certs(str(tmp_path_factory.mktemp("other")), name="other")


# --- helpers ----------------------------------------------------------------------


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              hostname: str | None = "localhost") -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake between two contexts in memory; raise the first side's SSLError."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = {"c": False, "s": False}
    for _ in range(10):
        for key, obj in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done["c"] and done["s"]:
            # TLS 1.3: the server's verdict on a client certificate reaches the client late
            try:
                client.write(b"x")
                s_in.write(c_out.read())
                server.read(1)
            except ssl.SSLWantReadError:
                pass
            return client, server
    raise AssertionError("handshake did not finish")


def client_ctx(ca: str | None = None, cert: str | None = None, key: str | None = None,
               verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def serial_of_peer(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def https_get(port: int, path: str, ctx: ssl.SSLContext, headers: dict | None = None,
              host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


AUTH = {"Authorization": f"token {TOKEN}"}


class TLSBackend:
    """An https target: answers JSON {path, client_cn} (client_cn = peer certificate CN)."""

    def __init__(self, cert: str, key: str, ca: str | None = None, require_client_cert=False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if require_client_cert:
            ctx.load_verify_locations(ca)
            ctx.verify_mode = ssl.CERT_REQUIRED

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                peer = self.connection.getpeercert()
                cn = None
                if peer:
                    cn = dict(x[0] for x in peer["subject"]).get("commonName")
                body = json.dumps({"path": self.path, "client_cn": cn}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}"

    def __enter__(self) -> TLSBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- contexts (in memory) -------------------------------------------------------------


def test_no_tls_flags_means_plain_listeners_and_a_verifying_client_context():
    tls = build_tls(Config())
    assert tls.public is None and tls.api is None
    ctx = tls.client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_public_tls_handshake_verifies_with_the_ca_and_offers_only_http11(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert))
    c = client_ctx(certs.ca_cert)
    c.set_alpn_protocols(["h2", "http/1.1"])
    client, _server = handshake(tls.public, c)
    assert client.selected_alpn_protocol() == "http/1.1"
    assert tls.api is None


def test_default_minimum_is_tls12_so_a_tls11_client_is_refused(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert))
    assert tls.public.minimum_version == ssl.TLSVersion.TLSv1_2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        c = client_ctx(certs.ca_cert)
        c.set_ciphers("DEFAULT:@SECLEVEL=0")
        c.minimum_version = ssl.TLSVersion.TLSv1_1
        c.maximum_version = ssl.TLSVersion.TLSv1_1
        # control: a server that allows TLS 1.1 completes the handshake with this client
        lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        lax.set_ciphers("DEFAULT:@SECLEVEL=0")
        lax.minimum_version = ssl.TLSVersion.TLSv1_1
        lax.load_cert_chain(certs.server_cert, certs.server_key)
    try:
        handshake(lax, c)
    except ssl.SSLError:
        pytest.skip("this OpenSSL build cannot speak TLS 1.1 at all")
    with pytest.raises(ssl.SSLError, match="(?i)version|protocol"):
        handshake(tls.public, c)


def test_ssl_protocol_tlsv1_3_pins_the_version(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_protocol="TLSv1_3"))
    client, _ = handshake(tls.public, client_ctx(certs.ca_cert))
    assert client.version() == "TLSv1.3"
    c12 = client_ctx(certs.ca_cert)
    c12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(tls.public, c12)


def test_ssl_protocol_tlsv1_2_pins_the_version_on_every_context(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           api_ssl_key=certs.server_key, api_ssl_cert=certs.server_cert,
                           ssl_protocol="TLSv1_2"))
    for ctx in (tls.public, tls.api):
        client, _ = handshake(ctx, client_ctx(certs.ca_cert))
        assert client.version() == "TLSv1.2"
    assert tls.client_context().maximum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("name, expected", [
    ("TLSv1_2", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)),
    ("TLSv1_2_method", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)),
    ("TLSv1_3_server_method", (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)),
    ("SSLv23", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED)),
    ("TLS", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED)),
])
def test_chp_protocol_names_map_to_version_ranges(name, expected):
    assert parse_ssl_protocol(name) == expected


def test_tls12_cipher_negotiated_from_chp_default_list(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_protocol="TLSv1_2"))
    client, _ = handshake(tls.public, client_ctx(certs.ca_cert))
    # EC key: the first ECDSA suite of CHP's list wins (server order honoured)
    assert client.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert tls.public.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_ssl_ciphers_replaces_the_default_list(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_protocol="TLSv1_2", ssl_ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))
    client, _ = handshake(tls.public, client_ctx(certs.ca_cert))
    assert client.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_allow_rc4_changes_the_list_but_rc4_stays_excluded():
    assert "HIGH:!RC4:" in default_ciphers() and "HIGH:RC4:" in default_ciphers(True)
    assert default_ciphers(True).count("!RC4") == 1  # the trailing !RC4 still wins (CHP quirk)


def test_request_cert_rejects_a_client_without_a_certificate(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_ca=certs.ca_cert, ssl_request_cert=True))
    with pytest.raises(ssl.SSLError):
        handshake(tls.public, client_ctx(certs.ca_cert))


def test_request_cert_accepts_a_client_certificate_from_the_ca(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_ca=certs.ca_cert, ssl_request_cert=True))
    _client, server = handshake(
        tls.public, client_ctx(certs.ca_cert, certs.client_cert, certs.client_key))
    assert dict(x[0] for x in server.getpeercert()["subject"])["commonName"].endswith("client")


def test_request_cert_rejects_a_client_certificate_from_another_ca(certs, other):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_ca=certs.ca_cert, ssl_request_cert=True))
    with pytest.raises(ssl.SSLError):
        handshake(tls.public, client_ctx(certs.ca_cert, other.client_cert, other.client_key))


def test_reject_unauthorized_without_request_cert_asks_for_nothing(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_reject_unauthorized=True))
    assert tls.public.verify_mode == ssl.CERT_NONE
    handshake(tls.public, client_ctx(certs.ca_cert))


def test_api_context_requires_client_certs_like_jupyterhub_internal_ssl(certs):
    tls = build_tls(Config(api_ssl_key=certs.server_key, api_ssl_cert=certs.server_cert,
                           api_ssl_ca=certs.ca_cert, api_ssl_request_cert=True,
                           api_ssl_reject_unauthorized=True))
    assert tls.public is None and tls.api.verify_mode == ssl.CERT_REQUIRED
    handshake(tls.api, client_ctx(certs.ca_cert, certs.client_cert, certs.client_key))
    with pytest.raises(ssl.SSLError):
        handshake(tls.api, client_ctx(certs.ca_cert))


def test_encrypted_key_loads_with_the_passphrase(certs):
    tls = build_tls(Config(ssl_key=certs.server_key_encrypted, ssl_cert=certs.server_cert,
                           ssl_key_passphrase=certs.passphrase))
    handshake(tls.public, client_ctx(certs.ca_cert))


def test_dhparam_file_is_loaded(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dh

    # RFC 3526 group 14 (2048-bit MODP): generating fresh parameters would take seconds
    p = int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
        "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
        "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
        "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
        "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
        "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
    path = tmp_path / "dh.pem"
    path.write_bytes(dh.DHParameterNumbers(p, 2).parameters().parameter_bytes(
        serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3))
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                           ssl_dhparam=str(path)))
    handshake(tls.public, client_ctx(certs.ca_cert))


def test_client_context_verifies_targets_against_client_ssl_ca_only(certs, other):
    ctx = build_tls(Config(client_ssl_ca=certs.ca_cert)).client_context()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    handshake(server, ctx, hostname="localhost")
    handshake(server, ctx, hostname="127.0.0.1")  # IP SAN
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    stranger.load_cert_chain(other.server_cert, other.server_key)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(stranger, ctx)


def test_client_context_refuses_an_ip_target_whose_cert_has_only_a_dns_san(certs):
    ctx = build_tls(Config(client_ssl_ca=certs.ca_cert)).client_context()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.dns_only_cert, certs.dns_only_key)
    handshake(server, ctx, hostname="localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, ctx, hostname="127.0.0.1")


def test_insecure_turns_target_verification_off(certs, other):
    ctx = build_tls(Config(client_ssl_ca=certs.ca_cert, insecure=True)).client_context()
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    stranger.load_cert_chain(other.server_cert, other.server_key)
    handshake(stranger, ctx, hostname="127.0.0.1")


def test_client_context_presents_the_client_certificate(certs):
    ctx = build_tls(Config(client_ssl_ca=certs.ca_cert, client_ssl_cert=certs.client_cert,
                           client_ssl_key=certs.client_key)).client_context()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    server.load_verify_locations(certs.ca_cert)
    server.verify_mode = ssl.CERT_REQUIRED
    _c, s = handshake(server, ctx)
    assert s.getpeercert() is not None


def test_reload_applies_new_certificates_to_the_live_context(certs, other, tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    tls = build_tls(Config(ssl_key=str(key), ssl_cert=str(cert)))
    live = tls.public
    client, _ = handshake(live, client_ctx(verify=False))
    assert client.getpeercert(binary_form=True) == _der(certs.server_cert)
    shutil.copy(other.server_cert, cert)
    shutil.copy(other.server_key, key)
    assert tls.reload() is True
    assert tls.public is live  # same object: listeners keep it
    client, _ = handshake(live, client_ctx(verify=False))
    assert client.getpeercert(binary_form=True) == _der(other.server_cert)


def test_failed_reload_keeps_the_old_certificates(certs, other, tmp_path, caplog):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    tls = build_tls(Config(ssl_key=str(key), ssl_cert=str(cert)))
    shutil.copy(other.server_cert, cert)  # new cert, old key: mismatch
    assert tls.reload() is False
    assert "TLS reload failed" in caplog.text and "--ssl-key" in caplog.text
    client, _ = handshake(tls.public, client_ctx(verify=False))
    assert client.getpeercert(binary_form=True) == _der(certs.server_cert)


def _der(pem_path: str) -> bytes:
    with open(pem_path, "rb") as f:
        return ssl.PEM_cert_to_DER_cert(f.read().decode())


# --- bad input: one error naming the flag -------------------------------------------------


def _error(config: Config) -> str:
    with pytest.raises(TLSConfigError) as e:
        validate_tls_files(config)
    return str(e.value)


def test_missing_key_file_names_the_flag(certs):
    err = _error(Config(ssl_key="/nonexistent/k.pem", ssl_cert=certs.server_cert))
    assert err.startswith("--ssl-key /nonexistent/k.pem") and "No such file" in err


def test_encrypted_key_without_passphrase_names_the_variable(certs):
    err = _error(Config(ssl_key=certs.server_key_encrypted, ssl_cert=certs.server_cert))
    assert err.startswith("--ssl-key") and "CONFIGPROXY_SSL_KEY_PASSPHRASE" in err


def test_wrong_passphrase_is_reported(certs):
    err = _error(Config(api_ssl_key=certs.server_key_encrypted, api_ssl_cert=certs.server_cert,
                        api_ssl_key_passphrase="nope"))
    assert err.startswith("--api-ssl-key") and "wrong passphrase" in err


def test_key_not_matching_the_cert_is_reported(certs, other):
    err = _error(Config(ssl_key=other.server_key, ssl_cert=certs.server_cert))
    assert err.startswith("--ssl-key") and "does not match --ssl-cert" in err


def test_cert_file_that_is_not_a_certificate_names_the_flag(certs):
    err = _error(Config(ssl_key=certs.server_key, ssl_cert=certs.server_key))
    assert err.startswith("--ssl-cert") and "not a PEM certificate" in err


def test_bad_ca_file_names_the_flag(certs):
    assert _error(Config(client_ssl_ca=certs.server_key)).startswith("--client-ssl-ca")
    assert _error(Config(api_ssl_key=certs.server_key, api_ssl_cert=certs.server_cert,
                         api_ssl_ca=certs.client_key)).startswith("--api-ssl-ca")


def test_bad_client_key_names_the_flag(certs, other):
    err = _error(Config(client_ssl_cert=certs.client_cert, client_ssl_key=other.client_key))
    assert err.startswith("--client-ssl-key")


@pytest.mark.parametrize("name", ["SSLv3", "SSLv2", "TLSv9", "bogus"])
def test_unknown_ssl_protocol_names_the_flag(certs, name):
    err = _error(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert, ssl_protocol=name))
    assert err.startswith("--ssl-protocol")


def test_empty_ssl_protocol_is_ignored_as_in_chp(certs):
    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert, ssl_protocol=""))
    assert tls.public.minimum_version == ssl.TLSVersion.TLSv1_2


def test_unusable_cipher_list_names_the_flag(certs):
    err = _error(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                        ssl_ciphers="NOT-A-CIPHER"))
    assert err.startswith("--ssl-ciphers") and "No cipher" in err


def test_bad_dhparam_file_names_the_flag(certs):
    err = _error(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert,
                        ssl_dhparam=certs.server_cert))
    assert err.startswith("--ssl-dhparam")


def test_cert_without_key_is_reported(certs):
    err = _error(Config(ssl_cert=certs.server_cert))
    assert err.startswith("--ssl-cert") and "--ssl-key" in err


def test_the_cli_refuses_to_start_with_a_wrong_passphrase(certs):
    from tests.support.proxy_process import run_cli

    r = run_cli("--ssl-key", certs.server_key_encrypted, "--ssl-cert", certs.server_cert,
                env={"CONFIGPROXY_SSL_KEY_PASSPHRASE": "wrong"})
    assert r.returncode == 1
    assert "--ssl-key" in r.stderr + r.stdout and "passphrase" in r.stderr + r.stdout


# --- the real process: listeners over TLS -------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(certs, tmp_path_factory):
    """Copies of the server cert/key that the reload test may overwrite."""
    d = tmp_path_factory.mktemp("live")
    cert, key = str(d / "server.pem"), str(d / "server.key")
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    return cert, key


@pytest.fixture(scope="module")
def tls_proxy(certs, tls_files):
    """Public and API listeners over TLS; the API requires a client certificate."""
    cert, key = tls_files
    with ProxyProcess("--ssl-key", key, "--ssl-cert", cert,
                      "--api-ssl-key", key, "--api-ssl-cert", cert, "--api-ssl-ca", certs.ca_cert,
                      "--api-ssl-request-cert", "--api-ssl-reject-unauthorized") as p:
        yield p


def test_api_over_tls_answers_a_client_with_a_certificate(tls_proxy, certs):
    ctx = client_ctx(certs.ca_cert, certs.client_cert, certs.client_key)
    status, body = https_get(tls_proxy.api_port, "/api/routes", ctx, AUTH)
    assert status == 200 and isinstance(json.loads(body), dict)


def test_api_over_tls_verifies_as_localhost_too(tls_proxy, certs):
    ctx = client_ctx(certs.ca_cert, certs.client_cert, certs.client_key)
    status, _ = https_get(tls_proxy.api_port, "/api/routes", ctx, AUTH, host="localhost")
    assert status == 200


def test_api_over_tls_rejects_a_client_without_a_certificate(tls_proxy, certs):
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        https_get(tls_proxy.api_port, "/api/routes", client_ctx(certs.ca_cert), AUTH)


def test_api_over_tls_rejects_a_certificate_from_another_ca(tls_proxy, certs, other):
    ctx = client_ctx(certs.ca_cert, other.client_cert, other.client_key)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        https_get(tls_proxy.api_port, "/api/routes", ctx, AUTH)


def test_plain_http_to_the_tls_api_gets_no_http_answer(tls_proxy):
    with socket.create_connection(("127.0.0.1", tls_proxy.api_port), timeout=5) as s:
        s.sendall(b"GET /api/routes HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(100)
        except ConnectionError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200")


def test_public_listener_speaks_tls12_plus_with_http11_alpn(tls_proxy, certs):
    ctx = client_ctx(certs.ca_cert)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.selected_alpn_protocol() == "http/1.1"
            assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_sighup_reloads_certificates_without_dropping_connections(tls_proxy, certs, other,
                                                                 tls_files):
    cert, key = tls_files
    ctx = client_ctx(certs.ca_cert, certs.client_cert, certs.client_key)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we look at which certificate is served, not trust
    kept = http.client.HTTPSConnection("127.0.0.1", tls_proxy.api_port, context=ctx, timeout=10)
    try:
        kept.request("GET", "/api/routes", headers=AUTH)
        r = kept.getresponse()
        assert r.status == 200
        r.read()
        assert serial_of_peer(kept.sock) == certs.serial_of("server_cert")

        # swap the files (a new key too), then SIGHUP
        shutil.copy(other.server_cert, cert)
        shutil.copy(other.server_key, key)
        before = tls_proxy.output().count("Reloaded TLS certificates")
        tls_proxy.signal(signal.SIGHUP)
        assert wait_until(lambda: tls_proxy.output().count("Reloaded TLS certificates") > before)
        assert tls_proxy.proc.poll() is None  # CHP dies on SIGHUP; we do not

        # new connections see the new certificate, on both listeners
        for port in (tls_proxy.port, tls_proxy.api_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw) as s:
                    assert serial_of_peer(s) == other.serial_of("server_cert")

        # the connection opened before the reload keeps working
        kept.request("GET", "/api/routes", headers=AUTH)
        r = kept.getresponse()
        assert r.status == 200
        r.read()
        assert serial_of_peer(kept.sock) == certs.serial_of("server_cert")

        # a broken file on the next SIGHUP: error logged, current certificate kept
        with open(cert, "w") as f:
            f.write("not a certificate\n")
        tls_proxy.signal(signal.SIGHUP)
        assert wait_until(lambda: "TLS reload failed" in tls_proxy.output())
        with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as s:
                assert serial_of_peer(s) == other.serial_of("server_cert")
    finally:
        kept.close()
        shutil.copy(certs.server_cert, cert)
        shutil.copy(certs.server_key, key)


# --- https through the proxy, https targets --------------------------------------------------


@pytest.fixture(scope="module")
def backend():
    with EchoBackend() as b:
        yield b


def test_https_request_through_the_proxy_reaches_a_plain_backend(certs, backend):
    with ProxyProcess("--ssl-key", certs.server_key, "--ssl-cert", certs.server_cert,
                      "--default-target", backend.url) as p:
        status, body = https_get(p.port, "/some/path?x=1", client_ctx(certs.ca_cert))
        assert status == 200
        seen = json.loads(body)
        assert seen["url"] == "/some/path?x=1"
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["x-forwarded-proto"] == "https"


def test_https_target_verified_by_client_ssl_ca(certs):
    with TLSBackend(certs.server_cert, certs.server_key) as target, \
            ProxyProcess("--client-ssl-ca", certs.ca_cert, "--default-target", target.url()) as p:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", "/hello")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["path"] == "/hello"


def test_https_target_with_unknown_ca_is_503_unless_insecure(certs, other):
    with TLSBackend(other.server_cert, other.server_key) as target:
        with ProxyProcess("--client-ssl-ca", certs.ca_cert, "--default-target", target.url()) as p:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            conn.request("GET", "/hello")
            r = conn.getresponse()
            r.read()
            assert r.status == 503
        with ProxyProcess("--client-ssl-ca", certs.ca_cert, "--insecure",
                          "--default-target", target.url()) as p:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            conn.request("GET", "/hello")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["path"] == "/hello"


def test_https_ip_target_with_dns_only_certificate_is_503(certs):
    with TLSBackend(certs.dns_only_cert, certs.dns_only_key) as target, \
            ProxyProcess("--client-ssl-ca", certs.ca_cert, "--default-target", target.url()) as p:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        conn.request("GET", "/")
        r = conn.getresponse()
        r.read()
        assert r.status == 503


def test_client_certificate_is_presented_to_a_target_that_requires_one(certs):
    with TLSBackend(certs.server_cert, certs.server_key, ca=certs.ca_cert,
                    require_client_cert=True) as target:
        with ProxyProcess("--client-ssl-ca", certs.ca_cert, "--client-ssl-cert", certs.client_cert,
                          "--client-ssl-key", certs.client_key,
                          "--default-target", target.url("localhost")) as p:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            conn.request("GET", "/x")
            r = conn.getresponse()
            assert r.status == 200
            assert json.loads(r.read())["client_cn"] == "cfproxy-test client"
        # without the client certificate the target refuses the handshake
        with ProxyProcess("--client-ssl-ca", certs.ca_cert,
                          "--default-target", target.url("localhost")) as p:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            conn.request("GET", "/x")
            r = conn.getresponse()
            r.read()
            assert r.status == 503


def test_env_passphrase_lets_the_process_start(certs):
    with ProxyProcess("--ssl-key", certs.server_key_encrypted, "--ssl-cert", certs.server_cert,
                      env={"CONFIGPROXY_SSL_KEY_PASSPHRASE": certs.passphrase}) as p:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as raw:
            with client_ctx(certs.ca_cert).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                assert s.version() in ("TLSv1.2", "TLSv1.3")
        assert "https://" in p.output()
    assert os.path.exists(certs.server_key_encrypted)


def test_wss_through_the_tls_public_listener(certs):
    import asyncio

    from tests.support.ws_backend import WSBackend
    from tests.support.ws_client import WSClient

    with WSBackend() as ws_backend, \
            ProxyProcess("--ssl-key", certs.server_key, "--ssl-cert", certs.server_cert,
                         "--default-target", ws_backend.url) as p:

        async def go() -> None:
            ws = await WSClient.connect(port=p.port, path="/user/x", ssl=client_ctx(certs.ca_cert),
                                        host_header=f"127.0.0.1:{p.port}")
            try:
                first = await ws.recv()
                assert first is not None
                await ws.send("hello over tls")
                assert await ws.recv() == "hello over tls"
                await ws.send(b"\x00" * 200_000)
                assert await ws.recv() == b"\x00" * 200_000
            finally:
                await ws.close()

        asyncio.run(go())


def test_transport_is_tls_tells_tls_transports_apart(certs):
    import asyncio

    from cfproxy.tls import transport_is_tls

    tls = build_tls(Config(ssl_key=certs.server_key, ssl_cert=certs.server_cert))
    seen: list[bool] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            seen.append(transport_is_tls(transport))

    async def go() -> None:
        loop = asyncio.get_running_loop()
        secure = await loop.create_server(Probe, "127.0.0.1", 0, ssl=tls.public)
        plain = await loop.create_server(Probe, "127.0.0.1", 0)
        try:
            _r, w = await asyncio.open_connection(
                "127.0.0.1", secure.sockets[0].getsockname()[1], ssl=client_ctx(certs.ca_cert),
                server_hostname="localhost")
            _r2, w2 = await asyncio.open_connection("127.0.0.1", plain.sockets[0].getsockname()[1])
            for _ in range(100):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.01)
            w.close()
            w2.close()
        finally:
            secure.close()
            plain.close()

    asyncio.run(go())
    assert seen == [True, False]
    assert transport_is_tls(None) is False


def test_tls_clients_closing_cleanly_log_nothing_on_stderr(certs):
    """A client that ends with close_notify (as wrk, browsers, Go do) must not make the
    event loop warn about eof_received on the public or the API listener."""
    with ProxyProcess("--ssl-key", certs.server_key, "--ssl-cert", certs.server_cert,
                      "--api-ssl-key", certs.server_key, "--api-ssl-cert", certs.server_cert,
                      "--default-target", "http://127.0.0.1:9") as p:
        ctx = client_ctx(certs.ca_cert)
        for port, path, extra in ((p.port, "/_chp_healthz", "Connection: close\r\n"),
                                  (p.port, "/_chp_healthz", ""),
                                  (p.api_port, "/api/routes", "Connection: close\r\n"),
                                  (p.api_port, "/api/routes", "")):
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}"
                      f"Authorization: token {TOKEN}\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            try:
                s.unwrap()  # close_notify
            except (ssl.SSLError, OSError):
                pass
            raw.close()
        wait_until(lambda: False, timeout=0.3)
        assert "eof_received" not in p.output()
