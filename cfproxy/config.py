"""Config: every option of cfproxy and its default, in one frozen dataclass.

This module is the single home of defaults. `cli.py` only fills a Config in
from argv and the environment; everything else reads it. Field names are CHP's
flag names in snake_case (`--keep-alive-timeout` -> `keep_alive_timeout`), so a
reader of CHP's `--help` finds each one. Times are kept in CHP's unit,
milliseconds, exactly as given on the command line.

Flags cfproxy adds (never changing what a CHP flag does) are grouped at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PORT = 8000
DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 5000
DEFAULT_MAX_HEAD_SIZE = 64 * 1024
DEFAULT_HEADER_TIMEOUT_MS = 60_000
DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000
DEFAULT_REQUEST_TIMEOUT_MS = 300_000  # Node's server.requestTimeout, which CHP inherits
DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS = 4_000  # below common servers' keep-alive (5 s and up)
MAX_WORKERS = 1024
API_MAX_BODY_SIZE = 1024 * 1024



def fast_paths_from_env(env=None) -> bool:
    """CFPROXY_FAST_PATHS: "0", "false", "no" or "off" turn the fast paths off."""
    import os

    value = (os.environ if env is None else env).get("CFPROXY_FAST_PATHS", "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


LOG_LEVELS = ("error", "warn", "info", "http", "verbose", "debug", "silly")


@dataclass(frozen=True)
class Config:
    # --- public listener ---------------------------------------------------
    ip: str | None = None  # None or "" = all interfaces; "*" is rewritten to "" by the CLI
    port: int = DEFAULT_PORT
    socket: str | None = None  # Unix socket path instead of ip:port

    # --- REST API listener -------------------------------------------------
    api_ip: str = "localhost"
    api_port: int = DEFAULT_PORT + 1  # CHP: port + 1 when absent / 0 / NaN
    api_socket: str | None = None
    auth_token: str | None = None  # CONFIGPROXY_AUTH_TOKEN; None/"" = API open (warned)

    # --- metrics listener (off unless a port or socket is given) -----------
    metrics_ip: str = ""
    metrics_port: int | None = None
    metrics_socket: str | None = None

    # --- routing and forwarding --------------------------------------------
    default_target: str | None = None
    error_target: str | None = None  # a "/" is appended when missing (done by the CLI)
    error_path: str | None = None
    host_routing: bool = False
    x_forward: bool = True  # --no-x-forward
    prepend_path: bool = True  # --no-prepend-path
    include_prefix: bool = True  # --no-include-prefix
    auto_rewrite: bool = False
    change_origin: bool = False
    protocol_rewrite: str | None = None
    # --custom-header, in order; a later same name (case-insensitive) already replaced
    custom_headers: tuple[tuple[str, str], ...] = ()
    insecure: bool = False  # CHP ignores it (quirk Q9); we honour it

    # --- timeouts (milliseconds, as CHP) -----------------------------------
    timeout: int | None = None  # client socket inactivity, web requests
    proxy_timeout: int | None = None  # waiting for the upstream response
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT_MS

    # --- redirect server ---------------------------------------------------
    redirect_port: int | None = None
    # CHP keeps --redirect-to as a *string* (so "443" still yields ":443", quirk Q18)
    redirect_to: str | None = None

    # --- process -----------------------------------------------------------
    pid_file: str | None = None
    log_level: str = "info"
    storage_backend: str | None = None  # "package.module:Class" (or redis://... later)

    # --- TLS on the public listener ----------------------------------------
    ssl_key: str | None = None
    ssl_cert: str | None = None
    ssl_ca: str | None = None
    ssl_request_cert: bool = False
    ssl_reject_unauthorized: bool = False
    ssl_protocol: str | None = None
    ssl_ciphers: str | None = None
    ssl_allow_rc4: bool = False
    ssl_dhparam: str | None = None
    ssl_key_passphrase: str | None = None  # CONFIGPROXY_SSL_KEY_PASSPHRASE

    # --- TLS on the API listener -------------------------------------------
    api_ssl_key: str | None = None
    api_ssl_cert: str | None = None
    api_ssl_ca: str | None = None
    api_ssl_request_cert: bool = False
    api_ssl_reject_unauthorized: bool = False
    api_ssl_key_passphrase: str | None = None  # CONFIGPROXY_API_SSL_KEY_PASSPHRASE

    # --- TLS to https targets ----------------------------------------------
    client_ssl_key: str | None = None
    client_ssl_cert: str | None = None
    client_ssl_ca: str | None = None
    client_ssl_request_cert: bool = False  # accepted, no effect (as in CHP)
    client_ssl_reject_unauthorized: bool = False  # accepted, no effect (as in CHP)

    # --- cfproxy additions ---------------------------------------------------
    max_head_size: int = DEFAULT_MAX_HEAD_SIZE  # --max-head-size: request line + headers
    header_timeout: int = DEFAULT_HEADER_TIMEOUT_MS  # --header-timeout: whole head must arrive
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT_MS  # --shutdown-timeout: drain grace period
    request_timeout: int = DEFAULT_REQUEST_TIMEOUT_MS  # --request-timeout: whole request; 0 = off
    upstream_idle_timeout: int = DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS  # --upstream-idle-timeout
    max_upstream_connections: int = 0  # --max-upstream-connections: per target, 0 = no cap
    # every fast path and memo of the data path (cfproxy/http/fastpath.py); off with the
    # environment variable CFPROXY_FAST_PATHS=0 (tests run the general code that way)
    fast_paths: bool = field(default_factory=fast_paths_from_env)
    # --workers: processes accepting on the public port(s); 1 = one process, no workers
    # ("auto" is resolved by the CLI to the CPUs this process may use)
    workers: int = 1

    # Extra keys a library user may want to carry; not set by the CLI.
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def public_tls(self) -> bool:
        return bool(self.ssl_key or self.ssl_cert)

    @property
    def api_tls(self) -> bool:
        return bool(self.api_ssl_key or self.api_ssl_cert)

    @property
    def client_tls_material(self) -> bool:
        return bool(self.client_ssl_key or self.client_ssl_cert or self.client_ssl_ca)

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port is not None or self.metrics_socket is not None
