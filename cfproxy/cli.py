"""The command line: argv + environment -> Config, with CHP 5.3.0's flags and errors.

Owns parsing and validation only; it never opens a socket (that is `server.py`).
Every CHP flag is accepted with CHP's meaning and spelling (`--opt value` and
`--opt=value`, last wins, `--custom-header` accumulates). A bad command line
exits 1 with ONE line on stderr that names the flag and the problem, e.g.

    error: unknown option '--bogus'
    error: option '--port <n> (defaults to 8000)' argument missing
    error: option '--ssl-key <keyfile>' cannot read file '/x.pem': No such file or directory

Numbers follow JS `parseInt` where CHP uses it, including CHP's fallbacks
(quirk Q6): `--port 0` or a non-number -> 8000; `--api-port` absent/0/non-number
-> port + 1 (8001 with `--socket`); `--keep-alive-timeout` 0/non-number -> 5000.
Out-of-range ports and negative times are errors. Where CHP is silent or crashes
we reject with a message instead: unknown `--log-level` (Q20), unreadable TLS
files, a bad `--default-target`/`--error-target` URL, a `--storage-backend` that
does not import.

The parser is hand-written (not argparse) so the messages match CHP's commander
output, which scripts and people already know.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cfproxy import CHP_COMPAT_VERSION
from cfproxy.config import (
    DEFAULT_HEADER_TIMEOUT_MS,
    DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT_MS,
    DEFAULT_SHUTDOWN_TIMEOUT_MS,
    DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS,
    LOG_LEVELS,
    MAX_WORKERS,
    Config,
    fast_paths_from_env,
)

PROG = "configurable-http-proxy"

IP_STAR_WARNING = (
    "Interpreting ip='*' as all-interfaces. Preferred usage is 0.0.0.0 for all IPv4 "
    "or '' for all-interfaces."
)


class CLIError(Exception):
    """A bad command line; the message is the one line printed to stderr."""


class _Exit(Exception):
    """--help / --version: print `text` to stdout and exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# --- the option table ---------------------------------------------------------

# kinds: "value" takes an argument; "flag" sets True; "negate" sets False (--no-x);
# "header" takes an argument and accumulates.
@dataclass(frozen=True)
class Option:
    spec: str  # as commander prints it: "--port <n> (defaults to 8000)"
    dest: str  # Config field name
    kind: str
    help: str

    @property
    def name(self) -> str:
        return self.spec.split(" ", 1)[0]


OPTIONS: tuple[Option, ...] = (
    Option("--ip <ip-address>", "ip", "value", "Public-facing IP of the proxy"),
    Option("--port <n> (defaults to 8000)", "port", "value", "Public-facing port of the proxy"),
    Option("--socket <path>", "socket", "value",
           "Path to a UNIX domain socket for the proxy to listen on. Alternative to specifying IP and port."),
    Option("--ssl-key <keyfile>", "ssl_key", "value", "SSL key to use, if any"),
    Option("--ssl-cert <certfile>", "ssl_cert", "value", "SSL certificate to use, if any"),
    Option("--ssl-ca <ca-file>", "ssl_ca", "value", "SSL certificate authority, if any"),
    Option("--ssl-request-cert", "ssl_request_cert", "flag",
           "Request SSL certs to authenticate clients; a client without a valid certificate "
           "is then refused, as in CHP (fails closed)"),
    Option("--ssl-reject-unauthorized", "ssl_reject_unauthorized", "flag",
           "Reject unauthorized SSL connections (only meaningful if --ssl-request-cert is given)"),
    Option("--ssl-protocol <ssl-protocol>", "ssl_protocol", "value",
           "Set specific SSL protocol, e.g. TLSv1_2, SSLv3"),
    Option("--ssl-ciphers <ciphers>", "ssl_ciphers", "value",
           "`:`-separated ssl cipher list. Default excludes RC4"),
    Option("--ssl-allow-rc4", "ssl_allow_rc4", "flag", "Allow RC4 cipher for SSL (disabled by default)"),
    Option("--ssl-dhparam <dhparam-file>", "ssl_dhparam", "value",
           "SSL Diffie-Helman Parameters pem file, if any"),
    Option("--api-ip <ip>", "api_ip", "value",
           'Inward-facing IP for API requests (default: "localhost")'),
    Option("--api-port <n>", "api_port", "value",
           "Inward-facing port for API requests (defaults to --port=value+1)"),
    Option("--api-socket <path>", "api_socket", "value",
           "Path to a UNIX domain socket for the API server to listen on. Alternative to specifying API IP and port."),
    Option("--api-ssl-key <keyfile>", "api_ssl_key", "value", "SSL key to use, if any, for API requests"),
    Option("--api-ssl-cert <certfile>", "api_ssl_cert", "value",
           "SSL certificate to use, if any, for API requests"),
    Option("--api-ssl-ca <ca-file>", "api_ssl_ca", "value",
           "SSL certificate authority, if any, for API requests"),
    Option("--api-ssl-request-cert", "api_ssl_request_cert", "flag",
           "Request SSL certs to authenticate clients for API requests; a client without a "
           "valid certificate is then refused, as in CHP (fails closed)"),
    Option("--api-ssl-reject-unauthorized", "api_ssl_reject_unauthorized", "flag",
           "Reject unauthorized SSL connections (only meaningful if --api-ssl-request-cert is given)"),
    Option("--client-ssl-key <keyfile>", "client_ssl_key", "value",
           "SSL key to use, if any, for proxy to client requests"),
    Option("--client-ssl-cert <certfile>", "client_ssl_cert", "value",
           "SSL certificate to use, if any, for proxy to client requests"),
    Option("--client-ssl-ca <ca-file>", "client_ssl_ca", "value",
           "SSL certificate authority, if any, for proxy to client requests"),
    Option("--client-ssl-request-cert", "client_ssl_request_cert", "flag",
           "Request SSL certs to authenticate clients for API requests"),
    Option("--client-ssl-reject-unauthorized", "client_ssl_reject_unauthorized", "flag",
           "Reject unauthorized SSL connections (only meaningful if --client-ssl-request-cert is given)"),
    Option("--default-target <host>", "default_target", "value",
           "Default proxy target (proto://host[:port])"),
    Option("--error-target <host>", "error_target", "value",
           "Alternate server for handling proxy errors (proto://host[:port])"),
    Option("--error-path <path>", "error_path", "value",
           "Alternate server for handling proxy errors (proto://host[:port])"),
    Option("--redirect-port <redirect-port>", "redirect_port", "value",
           "Redirect HTTP requests on this port to the server on HTTPS"),
    Option("--redirect-to <port>", "redirect_to", "value",
           "Redirect HTTP requests from --redirect-port to this port"),
    Option("--pid-file <pid-file>", "pid_file", "value", "Write our PID to a file"),
    Option("--no-x-forward", "x_forward", "negate", "Don't add 'X-forward-' headers to proxied requests"),
    Option("--no-prepend-path", "prepend_path", "negate",
           "Avoid prepending target paths to proxied requests"),
    Option("--no-include-prefix", "include_prefix", "negate",
           "Don't include the routing prefix in proxied requests"),
    Option("--auto-rewrite", "auto_rewrite", "flag",
           "Rewrite the Location header host/port in redirect responses"),
    Option("--change-origin", "change_origin", "flag",
           "Changes the origin of the host header to the target URL"),
    Option("--protocol-rewrite <proto>", "protocol_rewrite", "value",
           "Rewrite the Location header protocol in redirect responses to the specified protocol"),
    Option("--custom-header <header>", "custom_headers", "header",
           "Custom header to add to proxied requests. Use same option for multiple headers "
           "(--custom-header k1:v1 --custom-header k2:v2) (default: {})"),
    Option("--insecure", "insecure", "flag", "Disable SSL cert verification"),
    Option("--host-routing", "host_routing", "flag", "Use host routing (host as first level of path)"),
    Option("--metrics-ip <ip>", "metrics_ip", "value", 'IP for metrics server (default: "")'),
    Option("--metrics-port <n>", "metrics_port", "value",
           "Port of metrics server. Defaults to no metrics server"),
    Option("--metrics-socket <path>", "metrics_socket", "value",
           "Path to a UNIX domain socket for the metrics server to listen on. Alternative to specifying metrics IP and port."),
    Option("--log-level <loglevel>", "log_level", "value",
           'Log level (debug, info, warn, error) (default: "info")'),
    Option("--timeout <n>", "timeout", "value",
           "Timeout (in millis) when proxy drops connection for a request."),
    Option("--proxy-timeout <n>", "proxy_timeout", "value",
           "Timeout (in millis) when proxy receives no response from target."),
    Option("--storage-backend <storage-class>", "storage_backend", "value",
           "Define an external storage class. Defaults to in-MemoryStore. "
           "sqlite:////abs/path/routes.db keeps routes across restarts "
           "(?synchronous=full: also across power loss; docs/state.md); "
           "redis://host:port/db shares them between replicas"),
    Option("--keep-alive-timeout <timeout>", "keep_alive_timeout", "value",
           "Set timeout (in milliseconds) for Keep-Alive connections"),
    # --- cfproxy additions ---
    Option("--max-head-size <bytes>", "max_head_size", "value",
           f"Largest request line + headers accepted, in bytes (default: {DEFAULT_MAX_HEAD_SIZE})"),
    Option("--header-timeout <n>", "header_timeout", "value",
           "Time (in millis) a client has to send a complete request head; 0 disables "
           f"(default: {DEFAULT_HEADER_TIMEOUT_MS})"),
    Option("--shutdown-timeout <n>", "shutdown_timeout", "value",
           "On SIGTERM/SIGINT, time (in millis) in-flight requests get to finish "
           f"(default: {DEFAULT_SHUTDOWN_TIMEOUT_MS})"),
    Option("--request-timeout <n>", "request_timeout", "value",
           "Time (in millis) a client has to send a whole request (head and body) before it "
           f"gets 408 and is closed; 0 disables (default: {DEFAULT_REQUEST_TIMEOUT_MS})"),
    Option("--upstream-idle-timeout <n>", "upstream_idle_timeout", "value",
           "Time (in millis) an idle keep-alive connection to a target is kept for reuse; "
           f"0 keeps it until the target closes it (default: {DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS})"),
    Option("--max-upstream-connections <n>", "max_upstream_connections", "value",
           "Most connections to one target per proxy process; further requests wait in a "
           "short queue, 503 when it is full; 0 = no limit (default: 0)"),
    Option("--workers <n>", "workers", "value",
           "Processes accepting on the public port(s), sharing one route table; 'auto' = the "
           "CPUs this process may use (default: 1, a single process)"),
)

_BY_NAME = {o.name: o for o in OPTIONS}
SPEC = {o.dest: o.spec for o in OPTIONS}

# Flags whose value must be a readable regular file / a readable directory.
_FILE_FLAGS = (
    "ssl_key", "ssl_cert", "ssl_ca", "ssl_dhparam",
    "api_ssl_key", "api_ssl_cert", "api_ssl_ca",
    "client_ssl_key", "client_ssl_cert", "client_ssl_ca",
)


def help_text() -> str:
    """The usage text: CHP's options and descriptions, then ours, wrapped like commander."""
    import textwrap  # only for --help: not on the start-up path

    rows = [("-V, --version", "output the version number")]
    rows += [(o.spec, o.help) for o in OPTIONS]
    rows.append(("-h, --help", "display help for command"))
    left = 2 + 35
    lines = [f"Usage: {PROG} [options]", "", "Options:"]
    for spec, desc in rows:
        wrapped = textwrap.wrap(desc, 80 - left, break_on_hyphens=False) or [""]
        first = f"  {spec:<34} {wrapped[0]}" if len(spec) <= 34 else f"  {spec} {wrapped[0]}"
        lines.append(first)
        lines += [" " * left + w for w in wrapped[1:]]
    return "\n".join(lines) + "\n"


# --- argv scanning (commander's rules) ----------------------------------------


def _scan(argv: Sequence[str]) -> dict:
    """Walk argv like commander: returns {dest: raw value}; custom headers as a list.

    Missing option arguments and malformed custom headers fail at once; --help and
    --version win wherever they appear (before unknown options are reported);
    unknown options and positionals are reported after the walk.
    """
    raw: dict = {}
    unknown: list[str] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg in ("-h", "--help"):
            raise _Exit(help_text())
        if arg in ("-V", "--version"):
            raise _Exit(CHP_COMPAT_VERSION + "\n")
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, inline = arg.partition("=")
        opt = _BY_NAME.get(name)
        if opt is None or (eq and opt.kind in ("flag", "negate")):
            if not unknown:
                unknown.append(arg)
            continue
        if opt.kind in ("flag", "negate"):
            raw[opt.dest] = opt.kind == "flag"
            continue
        if eq:
            value = inline
        elif i < len(argv):
            value = argv[i]  # commander takes the next word even if it starts with "-"
            i += 1
        else:
            raise CLIError(f"error: option '{opt.spec}' argument missing")
        if opt.kind == "header":
            raw.setdefault(opt.dest, []).append(parse_custom_header(value))
        else:
            raw[opt.dest] = value
    if unknown:
        raise CLIError(f"error: unknown option '{unknown[0]}'")
    if positional:
        n = len(positional)
        raise CLIError(
            f"error: too many arguments. Expected 0 arguments but got {n}: {', '.join(positional)}."
        )
    return raw


def parse_custom_header(value: str) -> tuple[str, str]:
    """CHP's --custom-header rule: trim, split at the first ':', trim both sides."""
    value = value.strip()
    colon = value.find(":")
    if colon <= 0:
        raise CLIError(f"A colon was expected in custom header: {value}")
    name = value[:colon].strip()
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        raise CLIError(
            f"error: option '--custom-header <header>' argument '{value}' is invalid: "
            f"'{name}' is not a valid HTTP header name"
        )
    header_value = value[colon + 1:].strip()
    if any(c in header_value for c in "\r\n\0"):
        raise CLIError(
            f"error: option '--custom-header <header>' argument '{value}' is invalid: "
            "header value contains a control character"
        )
    return name, header_value


def _merge_headers(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """A later header with the same name (case-insensitive) replaces the earlier one in place."""
    out: dict[str, tuple[str, str]] = {}
    for name, value in pairs:
        key = name.lower()
        if key in out:
            out[key] = (out[key][0], value)
        else:
            out[key] = (name, value)
    return tuple(out.values())


# --- values -------------------------------------------------------------------

_JS_WS = " \t\n\r\v\f\u00a0\ufeff\u2028\u2029"
_JS_INT = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]*)|([0-9]+))")


def js_parse_int(value: str) -> int | None:
    """JavaScript `parseInt(value)`: leading digits (0x = hex), None for NaN."""
    m = _JS_INT.match(value.lstrip(_JS_WS))
    if m is None or m.group(2) == "":  # "0x" with no hex digits is NaN
        return None
    n = int(m.group(2), 16) if m.group(2) is not None else int(m.group(3))
    return -n if m.group(1) == "-" else n


def _invalid(dest: str, value: str, why: str) -> CLIError:
    return CLIError(f"error: option '{SPEC[dest]}' argument '{value}' is invalid: {why}")


def _port(dest: str, value: str, n: int) -> int:
    if not 0 <= n <= 65535:
        raise _invalid(dest, value, "port must be between 0 and 65535")
    return n


def _strict_int(dest: str, value: str, minimum: int = 0) -> int:
    if not re.fullmatch(r"\s*\+?[0-9]+\s*", value):
        raise _invalid(dest, value, "expected a whole number")
    n = int(value)
    if n < minimum:
        raise _invalid(dest, value, f"must be at least {minimum}")
    return n


def _workers(value: str) -> int:
    """--workers: a whole number from 1 to MAX_WORKERS, or "auto" (the CPUs we may use)."""
    text = value.strip()
    if text.lower() == "auto":
        from cfproxy.workers.cpus import usable_cpus

        return usable_cpus()
    if not re.fullmatch(r"\+?[0-9]+", text):
        raise _invalid("workers", value, "expected a whole number of processes or 'auto'")
    n = int(text)
    if not 1 <= n <= MAX_WORKERS:
        raise _invalid("workers", value, f"must be between 1 and {MAX_WORKERS}")
    return n


def _millis(dest: str, value: str) -> int | None:
    """--timeout / --proxy-timeout: parseInt; 0 = no timeout; not a number or negative = error."""
    n = js_parse_int(value)
    if n is None:
        raise _invalid(dest, value, "expected a number of milliseconds")
    if n < 0:
        raise _invalid(dest, value, "must not be negative")
    return n or None


def _check_file(dest: str, path: str) -> None:
    if path == "":
        return  # CHP treats an empty value as not given
    try:
        with open(path, "rb") as f:
            f.read(1)
    except IsADirectoryError:
        raise CLIError(f"error: option '{SPEC[dest]}' expects a file, but '{path}' is a directory") from None
    except OSError as e:
        raise CLIError(f"error: option '{SPEC[dest]}' cannot read file '{path}': {e.strerror}") from None


def _check_target(dest: str, url: str) -> None:
    from cfproxy.routing.target import InvalidTarget, parse_target

    try:
        parse_target(url)
    except InvalidTarget as e:
        raise _invalid(dest, url, str(e)) from None


def _check_storage_backend(spec: str) -> None:
    """The module of `package.module:Class` (or `package.module.Class`) must import."""
    import importlib

    if "://" in spec:
        return  # a URL (redis://...): the store validates and connects at start-up
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
    else:
        mod_name, _, attr = spec.rpartition(".")
    if not mod_name or not attr:
        raise _invalid("storage_backend", spec, "expected 'package.module:Class'")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise _invalid("storage_backend", spec, f"cannot import {mod_name!r}: {e}") from None
    if not hasattr(module, attr):
        raise _invalid("storage_backend", spec, f"module {mod_name!r} has no attribute {attr!r}")


# --- argv + env -> Config ----------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    config: Config
    warnings: tuple[str, ...]  # log lines (warn) server.py prints once logging is set up


def parse_args(argv: Sequence[str], env: dict | None = None) -> Parsed:
    """Turn argv (without the program name) and the environment into a Config.

    Raises CLIError (one-line message) or _Exit (help/version text).
    """
    env = os.environ if env is None else env
    raw = _scan(argv)
    kw: dict = {}
    warnings: list[str] = []

    # listeners (reference 1.3)
    socket = raw.get("socket") or None
    if socket is not None:
        for other in ("port", "ip"):
            if other in raw:
                raise CLIError(
                    f"error: option '{SPEC['socket']}' cannot be used with option '{SPEC[other]}'"
                )
        kw["socket"] = socket
        port = None
    else:
        port = DEFAULT_PORT
        if "port" in raw:
            port = _port("port", raw["port"], js_parse_int(raw["port"]) or DEFAULT_PORT)
        kw["port"] = port
        ip = raw.get("ip")
        if ip == "*":
            warnings.append(IP_STAR_WARNING)
            ip = ""
        kw["ip"] = ip
    api_socket = raw.get("api_socket") or None
    if api_socket is not None:
        kw["api_socket"] = api_socket  # wins over --api-port/--api-ip (quirk Q7, as CHP)
    n = js_parse_int(raw["api_port"]) if "api_port" in raw else None
    if n:
        kw["api_port"] = _port("api_port", raw["api_port"], n)
    else:
        kw["api_port"] = port + 1 if port is not None else DEFAULT_PORT + 1
        if kw["api_port"] > 65535 and api_socket is None:
            raise CLIError(f"error: option '{SPEC['api_port']}' defaults to --port + 1 = "
                           f"{kw['api_port']}, which is not a valid port; give --api-port")
    if "api_ip" in raw:
        kw["api_ip"] = raw["api_ip"]
    if "metrics_ip" in raw:
        kw["metrics_ip"] = raw["metrics_ip"]
    if raw.get("metrics_socket"):
        kw["metrics_socket"] = raw["metrics_socket"]  # wins over --metrics-port (Q7)
    elif raw.get("metrics_port"):  # any non-empty string enables metrics, as CHP
        v = raw["metrics_port"]
        n = js_parse_int(v)
        if n is None:
            raise _invalid("metrics_port", v, "expected a port number")
        kw["metrics_port"] = _port("metrics_port", v, n)

    # plain values and flags
    for dest in ("default_target", "error_target", "error_path", "pid_file", "protocol_rewrite",
                 "storage_backend", "ssl_protocol", "ssl_ciphers", "redirect_to", *_FILE_FLAGS):
        if raw.get(dest):
            kw[dest] = raw[dest]
    for o in OPTIONS:
        if o.kind in ("flag", "negate") and o.dest in raw:
            kw[o.dest] = raw[o.dest]
    if "custom_headers" in raw:
        kw["custom_headers"] = _merge_headers(raw["custom_headers"])

    # numbers
    if raw.get("redirect_port"):
        v = raw["redirect_port"]
        n = js_parse_int(v)
        if n is None:
            raise _invalid("redirect_port", v, "expected a port number")
        kw["redirect_port"] = _port("redirect_port", v, n)
    for dest in ("timeout", "proxy_timeout"):
        if dest in raw:
            kw[dest] = _millis(dest, raw[dest])
    if "keep_alive_timeout" in raw:
        v = raw["keep_alive_timeout"]
        n = js_parse_int(v)
        if n is not None and n < 0:
            raise _invalid("keep_alive_timeout", v, "must not be negative")
        kw["keep_alive_timeout"] = n or DEFAULT_KEEP_ALIVE_TIMEOUT_MS
    if "max_head_size" in raw:
        kw["max_head_size"] = _strict_int("max_head_size", raw["max_head_size"], minimum=1024)
    for dest in ("header_timeout", "shutdown_timeout", "request_timeout",
                 "upstream_idle_timeout", "max_upstream_connections"):
        if dest in raw:
            kw[dest] = _strict_int(dest, raw[dest])
    if "workers" in raw:
        kw["workers"] = _workers(raw["workers"])

    # log level (Q20 fix: an unknown level is an error, not silence)
    if "log_level" in raw:
        level = raw["log_level"].lower()
        if level not in LOG_LEVELS:
            raise _invalid("log_level", raw["log_level"], "expected one of " + ", ".join(LOG_LEVELS))
        kw["log_level"] = level

    # CHP's own start-up checks, in CHP's order
    if kw.get("redirect_port") is not None and not (kw.get("ssl_key") or kw.get("ssl_cert")):
        raise CLIError("HTTPS redirection specified but certificates not provided.")
    if kw.get("error_target") and kw.get("error_path"):
        raise CLIError("Cannot specify both error-target and error-path. Pick one.")

    # files, URLs, imports: fail now, naming the flag, instead of crashing later
    for dest in _FILE_FLAGS:
        if dest in kw:
            _check_file(dest, kw[dest])
    if "error_path" in kw:
        p = kw["error_path"]
        if not os.path.isdir(p):
            raise _invalid("error_path", p, "not a directory")
        if not os.access(p, os.R_OK | os.X_OK):
            raise _invalid("error_path", p, "directory is not readable")
    for dest in ("default_target", "error_target"):
        if dest in kw:
            _check_target(dest, kw[dest])
    if "error_target" in kw and not kw["error_target"].endswith("/"):
        kw["error_target"] += "/"
    if "storage_backend" in kw:
        _check_storage_backend(kw["storage_backend"])

    # environment (reference 1.5); an empty token means "no token", as CHP
    kw["auth_token"] = env.get("CONFIGPROXY_AUTH_TOKEN") or None
    kw["ssl_key_passphrase"] = env.get("CONFIGPROXY_SSL_KEY_PASSPHRASE") or None
    kw["api_ssl_key_passphrase"] = env.get("CONFIGPROXY_API_SSL_KEY_PASSPHRASE") or None
    kw["fast_paths"] = fast_paths_from_env(env)

    config = Config(**kw)
    _check_tls(config)
    return Parsed(config, tuple(warnings))


def _check_tls(config: Config) -> None:
    """Let cfproxy.tls check keys, passphrases and protocol names, if it offers to."""
    if not (config.public_tls or config.api_tls or config.client_tls_material or config.ssl_protocol):
        return
    from cfproxy import tls

    validate = getattr(tls, "validate_tls_files", None)
    if validate is None:
        return
    try:
        validate(config)
    except CLIError:
        raise
    except Exception as e:  # noqa: BLE001 - reported as one line, naming what tls.py named
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(msg if msg.startswith("error:") else f"error: {msg}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (`cfproxy`, `configurable-http-proxy`, `python -m cfproxy`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        parsed = parse_args(args)
    except _Exit as e:
        sys.stdout.write(e.text)
        sys.stdout.flush()
        return 0
    except CLIError as e:
        print(str(e), file=sys.stderr, flush=True)
        return 1
    from cfproxy.server import run

    return run(parsed.config, startup_warnings=parsed.warnings)
