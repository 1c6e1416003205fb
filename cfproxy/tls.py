"""TLS contexts built from the Config: public listener, API listener, https targets.

    tls = build_tls(config)        # raises TLSConfigError (a ValueError) naming the flag
    tls.public   ssl.SSLContext | None   for the public listener (--ssl-*)
    tls.api      ssl.SSLContext | None   for the API listener (--api-ssl-*)
    tls.client_context() -> ssl.SSLContext   for https targets and an https error target
    tls.reload() -> bool           SIGHUP: re-read certificates into the live contexts
    validate_tls_files(config)     the CLI's check: one error line naming the flag
    transport_is_tls(transport)    for protocols: TLS transports cannot stay half-open

What it owns: turning CHP's TLS flags (reference 1.2, 1.4) into `ssl.SSLContext`s.
What it must not do: open sockets or know about listeners. The contexts are created
once and handed to `create_server` / `create_connection`; `reload()` mutates them in
place (OpenSSL copies the certificate into each new connection at handshake time), so
listeners keep their context object and open connections are untouched.

CHP semantics kept, and where we differ:
- `--ssl-key` or `--ssl-cert` alone makes the listener TLS (a key-only PEM must then
  hold the certificate too). Passphrases come from CONFIGPROXY_[API_]SSL_KEY_PASSPHRASE.
- `--ssl-request-cert` asks for a client certificate and, as in Node (whose unset
  `rejectUnauthorized` means true), rejects clients without a valid one.
  `--ssl-reject-unauthorized` alone changes nothing. Client certs are verified against
  `--ssl-ca` (`--api-ssl-ca` for the API), else the system store.
- `--ssl-protocol NAME` (CHP appends `_method` and hands it to OpenSSL): `TLSv1_2` pins
  exactly TLS 1.2, `SSLv23`/`TLS` negotiate; applies to public, API and client contexts.
  Unknown names -> TLSConfigError. Without it the minimum is TLS 1.2 (modern default;
  Node 20 also defaults to 1.2).
- `--ssl-ciphers` replaces CHP's default list (1.4); `--ssl-allow-rc4` only flips
  `!RC4` to `RC4` in that list, which still ends in `!RC4` (a no-op, as in CHP).
  Server cipher order is honoured. TLS 1.3 suites are unaffected.
- `--ssl-dhparam` is loaded into the public and API contexts.
- ALPN offers `http/1.1` only (no HTTP/2), so wss upgrades work unchanged.
- https targets: hostname verification on (an IP target needs an IP SAN), trust =
  `--client-ssl-ca` only if given, else the system store; `--client-ssl-key/-cert`
  are presented. `--insecure` turns verification off (CHP ignores it: quirk Q9, fixed).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from cfproxy.config import Config
from cfproxy.log import log

# reference 1.4, in CHP's order; index of the RC4 toggle is 12
_CHP_CIPHERS = [
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "DHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "DHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA256",
    "DHE-RSA-AES256-SHA256",
    "HIGH",
    "!RC4",
    "!aNULL",
    "!eNULL",
    "!EXPORT",
    "!DES",
    "!RC4",
    "!MD5",
    "!PSK",
    "!SRP",
    "!CAMELLIA",
]

_V = ssl.TLSVersion
# CHP --ssl-protocol names (without "_method") -> (minimum, maximum); None = library default
_PROTOCOLS: dict[str, tuple[ssl.TLSVersion, ssl.TLSVersion]] = {
    "SSLv23": (_V.TLSv1_2, _V.MAXIMUM_SUPPORTED),
    "TLS": (_V.TLSv1_2, _V.MAXIMUM_SUPPORTED),
    "TLSv1": (_V.TLSv1, _V.TLSv1),
    "TLSv1_1": (_V.TLSv1_1, _V.TLSv1_1),
    "TLSv1_2": (_V.TLSv1_2, _V.TLSv1_2),
    "TLSv1_3": (_V.TLSv1_3, _V.TLSv1_3),
}
DEFAULT_MINIMUM = _V.TLSv1_2


class TLSConfigError(ValueError):
    """A TLS flag that cannot be used; the message names the flag and says why."""


def default_ciphers(allow_rc4: bool = False) -> str:
    """CHP's default cipher string (reference 1.4)."""
    names = list(_CHP_CIPHERS)
    if allow_rc4:
        names[12] = "RC4"
    return ":".join(names)


def parse_ssl_protocol(name: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """Map a CHP `--ssl-protocol` value (e.g. `TLSv1_2`) to (minimum, maximum) versions."""
    base = name.strip()
    for suffix in ("_method", "_server", "_client"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    try:
        return _PROTOCOLS[base]
    except KeyError:
        known = ", ".join(_PROTOCOLS)
        if base.startswith("SSLv2") or base.startswith("SSLv3"):
            why = f"{base} is insecure and not supported"
        else:
            why = "unknown protocol"
        raise TLSConfigError(
            f"--ssl-protocol {name!r}: {why} (use one of {known})"
        ) from None


# --- file checks that name the flag -----------------------------------------------


def _readable(flag: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TLSConfigError(f"{flag} {path}: cannot read file: {e.strerror or e}") from None


def _is_encrypted(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"ENCRYPTED" in head


def _password(passphrase: str | None) -> Callable[[], str]:
    # Always a callable: with password=None OpenSSL would prompt on the terminal
    # for an encrypted key. An empty answer makes such a key fail to load instead.
    return lambda: passphrase or ""


def _load_chain(ctx: ssl.SSLContext, prefix: str, cert: str | None, key: str | None,
                passphrase: str | None, passphrase_env: str) -> None:
    """load_cert_chain with errors attributed to --<prefix>cert or --<prefix>key."""
    cert_flag, key_flag = f"--{prefix}cert", f"--{prefix}key"
    if cert:
        _readable(cert_flag, cert)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            probe.load_verify_locations(cafile=cert)
        except (ssl.SSLError, ValueError) as e:
            raise TLSConfigError(f"{cert_flag} {cert}: not a PEM certificate ({e})") from None
    if key:
        _readable(key_flag, key)
    certfile = cert or key
    try:
        ctx.load_cert_chain(certfile, key if cert else None, password=_password(passphrase))
    except (ssl.SSLError, ValueError, OSError) as e:
        text = str(e)
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            raise TLSConfigError(f"{key_flag} {key}: private key does not match {cert_flag} {cert}") from None
        if (key and _is_encrypted(key)) or "BAD_DECRYPT" in text:
            how = "wrong passphrase" if passphrase else f"encrypted key and {passphrase_env} is not set"
            raise TLSConfigError(f"{key_flag} {key}: cannot decrypt the private key ({how})") from None
        if not cert:
            raise TLSConfigError(
                f"{key_flag} {key}: cannot load a certificate and key from it "
                f"(give {cert_flag} too) ({text})") from None
        if not key:
            raise TLSConfigError(
                f"{cert_flag} {cert}: no private key in the file (give {key_flag} too) ({text})"
            ) from None
        raise TLSConfigError(f"{key_flag} {key}: not a usable private key ({text})") from None


def _load_ca(ctx: ssl.SSLContext, flag: str, path: str) -> None:
    _readable(flag, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError) as e:
        raise TLSConfigError(f"{flag} {path}: no usable CA certificate ({e})") from None


def _apply_common(ctx: ssl.SSLContext, config: Config, *, ciphers: str | None) -> None:
    if config.ssl_protocol:
        lo, hi = parse_ssl_protocol(config.ssl_protocol)
    else:
        lo, hi = DEFAULT_MINIMUM, _V.MAXIMUM_SUPPORTED
    try:
        ctx.minimum_version = lo
        ctx.maximum_version = hi
    except (ValueError, ssl.SSLError) as e:
        raise TLSConfigError(
            f"--ssl-protocol {config.ssl_protocol}: not supported by this OpenSSL ({e})") from None
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as e:
            raise TLSConfigError(f"--ssl-ciphers {ciphers!r}: {e.args[0] if e.args else e}") from None
    ctx.set_alpn_protocols(["http/1.1"])


# --- the three kinds of context ----------------------------------------------------


class _ServerSpec:
    """Which Config fields one server context is built from (public or API)."""

    def __init__(self, config: Config, api: bool) -> None:
        p = "api_ssl_" if api else "ssl_"
        self.flag_prefix = "api-ssl-" if api else "ssl-"
        self.cert: str | None = getattr(config, p + "cert")
        self.key: str | None = getattr(config, p + "key")
        self.ca: str | None = getattr(config, p + "ca")
        self.request_cert: bool = getattr(config, p + "request_cert")
        self.passphrase: str | None = getattr(config, p + "key_passphrase")
        self.passphrase_env = ("CONFIGPROXY_API_SSL_KEY_PASSPHRASE" if api
                               else "CONFIGPROXY_SSL_KEY_PASSPHRASE")


def _server_context(config: Config, spec: _ServerSpec) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    _apply_common(ctx, config, ciphers=config.ssl_ciphers or default_ciphers(config.ssl_allow_rc4))
    _load_chain(ctx, spec.flag_prefix, spec.cert, spec.key, spec.passphrase, spec.passphrase_env)
    if spec.ca:
        _load_ca(ctx, f"--{spec.flag_prefix}ca", spec.ca)
    if spec.request_cert:
        # Node: requestCert with rejectUnauthorized unset (= true) rejects clients
        # that present no valid certificate.
        if not spec.ca:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if config.ssl_dhparam:
        _readable("--ssl-dhparam", config.ssl_dhparam)
        try:
            ctx.load_dh_params(config.ssl_dhparam)
        except (ssl.SSLError, ValueError, OSError) as e:
            raise TLSConfigError(f"--ssl-dhparam {config.ssl_dhparam}: not PEM DH parameters ({e})") from None
    return ctx


def _client_context(config: Config) -> ssl.SSLContext:
    if config.client_ssl_ca:
        # As Node's `ca` option: the given CAs replace the system store.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_ca(ctx, "--client-ssl-ca", config.client_ssl_ca)
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # system store (~25 ms)
    _apply_common(ctx, config, ciphers=config.ssl_ciphers)
    if config.client_ssl_cert or config.client_ssl_key:
        _load_chain(ctx, "client-ssl-", config.client_ssl_cert, config.client_ssl_key,
                    None, "(no passphrase variable for --client-ssl-key)")
    if config.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TLSContexts:
    """The SSL contexts of one proxy; built once, reloaded in place."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._public_spec = _ServerSpec(config, api=False)
        self._api_spec = _ServerSpec(config, api=True)
        self.public: ssl.SSLContext | None = (
            _server_context(config, self._public_spec) if config.public_tls else None)
        self.api: ssl.SSLContext | None = (
            _server_context(config, self._api_spec) if config.api_tls else None)
        # Built eagerly when --client-ssl-* files are given, so a bad file fails at start-up;
        # else on first use, so proxies without https targets never load the system store.
        self._client: ssl.SSLContext | None = (
            _client_context(config) if config.client_tls_material else None)

    def client_context(self) -> ssl.SSLContext:
        """The context for connections to https targets (and an https error target)."""
        ctx = self._client
        if ctx is None:
            ctx = self._client = _client_context(self.config)
        return ctx

    def reload(self) -> bool:
        """Re-read certificate, key and CA files into the live contexts (SIGHUP).

        Each context is checked on a scratch copy first; only when every file loads is
        anything applied, so a half-written certificate never reaches a listener.
        Existing connections keep their session; new handshakes see the new files.
        CA files can only add trust here (OpenSSL has no way to drop a loaded CA).
        Returns True when reloaded; on failure logs an error and keeps the old ones.
        """
        config = self.config
        # (label, context, flag prefix, cert, key, passphrase, passphrase env, ca)
        plan: list[tuple[str, ssl.SSLContext, str, str | None, str | None, str | None, str,
                         str | None]] = []
        for label, ctx, spec in (("public", self.public, self._public_spec),
                                 ("api", self.api, self._api_spec)):
            if ctx is not None:
                plan.append((label, ctx, spec.flag_prefix, spec.cert, spec.key, spec.passphrase,
                             spec.passphrase_env, spec.ca))
        if self._client is not None and config.client_tls_material:
            plan.append(("client", self._client, "client-ssl-", config.client_ssl_cert,
                         config.client_ssl_key, None, "", config.client_ssl_ca))
        if not plan:
            log.info("SIGHUP: no TLS certificates configured, nothing to reload")
            return True
        try:
            for _label, _ctx, prefix, cert, key, passphrase, env, ca in plan:
                scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                if cert or key:
                    _load_chain(scratch, prefix, cert, key, passphrase, env)
                if ca:
                    _load_ca(scratch, f"--{prefix}ca", ca)
            for _label, ctx, prefix, cert, key, passphrase, env, ca in plan:
                if cert or key:
                    _load_chain(ctx, prefix, cert, key, passphrase, env)
                if ca:
                    _load_ca(ctx, f"--{prefix}ca", ca)
        except TLSConfigError as e:
            log.error("TLS reload failed, keeping the current certificates: %s", e)
            return False
        log.info("Reloaded TLS certificates (%s)", ", ".join(item[0] for item in plan))
        return True


def transport_is_tls(transport: Any) -> bool:
    """True for an asyncio/uvloop TLS transport.

    Such transports cannot stay half-open: a protocol whose `eof_received()` returns True
    on one gets closed anyway, and the loop logs `returning true from eof_received() has no
    effect when using ssl` to stderr once per connection. Protocols should return
    `not transport_is_tls(transport)` where they would keep a plain connection open.
    """
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def build_tls(config: Config) -> TLSContexts:
    """Build every context the config asks for; raises TLSConfigError naming the flag."""
    return TLSContexts(config)


def validate_tls_files(config: Config) -> None:
    """Raise TLSConfigError (one line, naming the flag) if any TLS flag is unusable.

    Checks what `build_tls` would load: readable files, PEM certificates, keys that
    decrypt with the given passphrase and match their certificate, CA bundles, DH
    parameters, `--ssl-protocol` and `--ssl-ciphers`.
    """
    if config.ssl_protocol:
        parse_ssl_protocol(config.ssl_protocol)
    build_tls(config)

