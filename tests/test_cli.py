"""The command line: CHP 5.3.0's flags, defaults and error messages (reference 1.1-1.3, 1.5).

Most cases call `cfproxy.cli.main` / `parse_args` in-process (the same code the
console script runs, without a process per case); a few run the real command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cfproxy import CHP_COMPAT_VERSION
from cfproxy.cli import CLIError, js_parse_int, main, parse_args
from cfproxy.config import Config
from tests.support.proxy_process import run_cli

ROOT = Path(__file__).resolve().parent.parent

# `configurable-http-proxy --help` of CHP 5.3.0
CHP_FLAGS = """
--ip --port --socket --ssl-key --ssl-cert --ssl-ca --ssl-request-cert --ssl-reject-unauthorized
--ssl-protocol --ssl-ciphers --ssl-allow-rc4 --ssl-dhparam --api-ip --api-port --api-socket
--api-ssl-key --api-ssl-cert --api-ssl-ca --api-ssl-request-cert --api-ssl-reject-unauthorized
--client-ssl-key --client-ssl-cert --client-ssl-ca --client-ssl-request-cert
--client-ssl-reject-unauthorized --default-target --error-target --error-path --redirect-port
--redirect-to --pid-file --no-x-forward --no-prepend-path --no-include-prefix --auto-rewrite
--change-origin --protocol-rewrite --custom-header --insecure --host-routing --metrics-ip
--metrics-port --metrics-socket --log-level --timeout --proxy-timeout --storage-backend
--keep-alive-timeout
""".split()
OUR_FLAGS = ["--max-head-size", "--header-timeout", "--shutdown-timeout"]

FILE_FLAGS = ["--ssl-key", "--ssl-cert", "--ssl-ca", "--ssl-dhparam", "--api-ssl-key",
              "--api-ssl-cert", "--api-ssl-ca", "--client-ssl-key", "--client-ssl-cert",
              "--client-ssl-ca"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from tests.support.certs import make_certs

    return make_certs(str(tmp_path_factory.mktemp("certs")))


def cfg(*argv: str, env: dict | None = None) -> Config:
    return parse_args(list(argv), env=env or {}).config


def fails(capsys, *argv: str) -> str:
    """Run main(argv), assert exit 1 with exactly one stderr line and nothing on stdout."""
    assert main(list(argv)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


# --- help and version ---------------------------------------------------------


def test_version_prints_chp_compatible_version():
    r = run_cli("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, CHP_COMPAT_VERSION + "\n", "")
    assert run_cli("-V").stdout == "5.3.0\n"


def test_help_lists_every_chp_flag_and_ours():
    r = run_cli("--help")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("Usage: configurable-http-proxy [options]\n")
    for flag in CHP_FLAGS + OUR_FLAGS + ["-V, --version", "-h, --help"]:
        assert f"  {flag}" in r.stdout, flag
    assert "--port <n> (defaults to 8000)" in r.stdout


def test_help_wins_over_an_unknown_option(capsys):
    assert main(["--bogus", "-h"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Usage:") and err == ""


def test_help_lines_fit_in_80_columns(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80


# --- commander's errors ------------------------------------------------------


def test_unknown_option_is_one_line_error(capsys):
    assert fails(capsys, "--bogus") == "error: unknown option '--bogus'"


def test_removed_statsd_flags_are_unknown_options(capsys):
    assert fails(capsys, "--statsd-host", "x") == "error: unknown option '--statsd-host'"


def test_short_unknown_option_is_rejected(capsys):
    assert fails(capsys, "-x") == "error: unknown option '-x'"


def test_boolean_flag_with_a_value_is_unknown(capsys):
    assert fails(capsys, "--insecure=yes") == "error: unknown option '--insecure=yes'"


def test_positional_argument_is_rejected(capsys):
    assert fails(capsys, "foo") == "error: too many arguments. Expected 0 arguments but got 1: foo."


def test_missing_value_names_the_flag(capsys):
    assert fails(capsys, "--port") == "error: option '--port <n> (defaults to 8000)' argument missing"
    assert fails(capsys, "--default-target") == "error: option '--default-target <host>' argument missing"


def test_value_may_start_with_a_dash_like_commander():
    assert cfg("--protocol-rewrite", "--weird").protocol_rewrite == "--weird"


@pytest.mark.parametrize("other", [["--port", "9000"], ["--ip", "127.0.0.1"], ["--ip="]])
def test_socket_cannot_be_combined_with_port_or_ip(capsys, other):
    err = fails(capsys, "--socket", "/tmp/x.sock", *other)
    assert err.startswith("error: option '--socket <path>' cannot be used with option '--")
    assert other[0].split("=")[0] in err


def test_real_command_exits_1_with_one_stderr_line():
    r = run_cli("--port", "99999")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--port" in r.stderr


# --- forms and repetition -------------------------------------------------------


def test_equals_form_is_the_same_as_a_separate_value():
    a = cfg("--port=9000", "--api-ip=127.0.0.2", "--default-target=http://h:1", "--log-level=debug")
    b = cfg("--port", "9000", "--api-ip", "127.0.0.2", "--default-target", "http://h:1",
            "--log-level", "debug")
    assert a == b
    assert (a.port, a.api_ip, a.default_target, a.log_level) == (9000, "127.0.0.2", "http://h:1", "debug")


def test_equals_form_keeps_further_equals_signs():
    assert cfg("--protocol-rewrite=a=b").protocol_rewrite == "a=b"


def test_last_value_wins():
    assert cfg("--port", "9000", "--port", "9100").port == 9100


def test_booleans_and_negations_map_to_config():
    c = cfg("--no-x-forward", "--no-prepend-path", "--no-include-prefix", "--auto-rewrite",
            "--change-origin", "--insecure", "--host-routing", "--ssl-allow-rc4",
            "--client-ssl-request-cert", "--client-ssl-reject-unauthorized")
    assert (c.x_forward, c.prepend_path, c.include_prefix) == (False, False, False)
    assert c.auto_rewrite and c.change_origin and c.insecure and c.host_routing and c.ssl_allow_rc4
    assert c.client_ssl_request_cert and c.client_ssl_reject_unauthorized
    d = cfg()
    assert (d.x_forward, d.prepend_path, d.include_prefix, d.insecure) == (True, True, True, False)


def test_defaults_match_chp():
    c = cfg()
    assert (c.ip, c.port, c.socket, c.api_ip, c.api_port) == (None, 8000, None, "localhost", 8001)
    assert (c.metrics_enabled, c.log_level, c.keep_alive_timeout) == (False, "info", 5000)
    assert (c.max_head_size, c.header_timeout, c.shutdown_timeout) == (65536, 60000, 10000)
    assert c.custom_headers == () and c.auth_token is None


# --- numbers (JS parseInt, quirk Q6) ----------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("8000", 8000), ("  42", 42), ("12abc", 12), ("abc", None), ("", None), ("-5", -5),
    ("+7", 7), ("0x1F", 31), ("0x", None), ("1e3", 1), ("3.9", 3),
])
def test_js_parse_int(text, value):
    assert js_parse_int(text) == value


@pytest.mark.parametrize("given,port", [("0", 8000), ("abc", 8000), ("12abc", 12), ("9000", 9000)])
def test_port_follows_chp_parseint_fallback(given, port):
    c = cfg("--port", given)
    assert (c.port, c.api_port) == (port, port + 1)


@pytest.mark.parametrize("given", ["0", "x", ""])
def test_api_port_absent_zero_or_nan_is_port_plus_one(given):
    assert cfg("--port", "9000", "--api-port", given).api_port == 9001


def test_api_port_defaults_to_8001_with_socket():
    c = cfg("--socket", "/tmp/p.sock")
    assert (c.socket, c.port, c.api_port) == ("/tmp/p.sock", 8000, 8001)


def test_api_socket_wins_over_api_port():
    c = cfg("--api-socket", "/tmp/a.sock", "--api-port", "9999")
    assert c.api_socket == "/tmp/a.sock"


@pytest.mark.parametrize("flag,value", [
    ("--port", "70000"), ("--port", "-1"), ("--api-port", "99999"), ("--api-port", "-3"),
    ("--metrics-port", "65536"), ("--metrics-port", "abc"),
])
def test_bad_port_is_an_error_naming_the_flag(capsys, flag, value):
    err = fails(capsys, flag, value)
    assert err.startswith(f"error: option '{flag} ") and value in err


def test_api_port_overflowing_from_port_65535_is_an_error(capsys):
    assert "--api-port" in fails(capsys, "--port", "65535")


def test_metrics_port_enables_metrics():
    c = cfg("--metrics-port", "9100")
    assert c.metrics_enabled and c.metrics_port == 9100 and c.metrics_ip == ""
    assert cfg("--metrics-port", "0").metrics_port == 0  # random port, as CHP
    assert not cfg("--metrics-port", "").metrics_enabled
    s = cfg("--metrics-socket", "/tmp/m.sock", "--metrics-port", "9100")
    assert s.metrics_socket == "/tmp/m.sock"


def test_ip_star_means_all_interfaces_with_chp_warning():
    parsed = parse_args(["--ip", "*"], env={})
    assert parsed.config.ip == ""
    assert parsed.warnings == ("Interpreting ip='*' as all-interfaces. Preferred usage is "
                               "0.0.0.0 for all IPv4 or '' for all-interfaces.",)
    assert parse_args(["--ip", "0.0.0.0"], env={}).warnings == ()


def test_timeouts_are_milliseconds_and_zero_means_none():
    c = cfg("--timeout", "1500", "--proxy-timeout", "2500ms", "--keep-alive-timeout", "7000")
    assert (c.timeout, c.proxy_timeout, c.keep_alive_timeout) == (1500, 2500, 7000)
    assert cfg("--timeout", "0").timeout is None


@pytest.mark.parametrize("given", ["0", "x"])
def test_keep_alive_timeout_zero_or_nan_is_5000(given):
    assert cfg("--keep-alive-timeout", given).keep_alive_timeout == 5000


@pytest.mark.parametrize("flag,value", [
    ("--timeout", "soon"), ("--timeout", "-1"), ("--proxy-timeout", "x"),
    ("--keep-alive-timeout", "-5"), ("--max-head-size", "big"), ("--max-head-size", "10"),
    ("--header-timeout", "1.5"), ("--header-timeout", "-1"), ("--shutdown-timeout", "ten"),
    ("--redirect-port", "https"),
])
def test_bad_number_is_an_error_naming_the_flag(capsys, flag, value):
    args = [flag, value]
    if flag == "--redirect-port":
        args += ["--ssl-cert", str(ROOT / "README.md")]
    err = fails(capsys, *args)
    assert err.startswith(f"error: option '{flag} ") and f"'{value}'" in err


def test_added_flags_set_config():
    c = cfg("--max-head-size", "131072", "--header-timeout", "0", "--shutdown-timeout=2500")
    assert (c.max_head_size, c.header_timeout, c.shutdown_timeout) == (131072, 0, 2500)


# --- log level (Q20 fix) ---------------------------------------------------------


def test_log_level_is_case_insensitive():
    assert cfg("--log-level", "DEBUG").log_level == "debug"
    assert cfg("--log-level", "Warn").log_level == "warn"


def test_unknown_log_level_is_rejected(capsys):
    err = fails(capsys, "--log-level", "loud")
    assert err.startswith("error: option '--log-level <loglevel>' argument 'loud' is invalid")


# --- custom headers (reference 1.2) --------------------------------------------------


@pytest.mark.parametrize("given,header", [
    ("k1: v1", ("k1", "v1")),
    (" k2 : host:123 ", ("k2", "host:123")),
    ("Empty:", ("Empty", "")),
    ("X-A:b:c", ("X-A", "b:c")),
])
def test_custom_header_parsing(given, header):
    assert cfg("--custom-header", given).custom_headers == (header,)


def test_custom_headers_accumulate_and_later_same_name_replaces():
    c = cfg("--custom-header", "k1:v1", "--custom-header", "k2: v2", "--custom-header=K1: v3")
    assert c.custom_headers == (("k1", "v3"), ("k2", "v2"))


@pytest.mark.parametrize("given,shown", [("invalid", "invalid"), (":a", ":a"), ("  ", ""),
                                         ("  :x ", ":x")])
def test_custom_header_without_colon_is_chp_error(capsys, given, shown):
    assert fails(capsys, "--custom-header", given) == f"A colon was expected in custom header: {shown}"


@pytest.mark.parametrize("given", ["a b: c", "bad\x01: v", "x: a\rb"])
def test_custom_header_with_bad_name_or_value_is_rejected(capsys, given):
    assert fails(capsys, "--custom-header", given).startswith("error: option '--custom-header <header>'")


def test_custom_header_error_comes_before_other_errors(capsys):
    assert fails(capsys, "--custom-header", "nocolon", "--bogus").startswith("A colon was expected")


# --- files, directories, URLs, imports -------------------------------------------------


@pytest.mark.parametrize("flag", FILE_FLAGS)
def test_missing_tls_file_is_an_error_naming_the_flag(capsys, tmp_path, flag):
    missing = tmp_path / "nope.pem"
    err = fails(capsys, flag, str(missing))
    assert err.startswith(f"error: option '{flag} ") and str(missing) in err
    assert "No such file" in err


def test_tls_file_that_is_a_directory_is_an_error(capsys, tmp_path):
    err = fails(capsys, "--ssl-key", str(tmp_path))
    assert "--ssl-key" in err and "directory" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_tls_file_is_an_error(capsys, tmp_path):
    f = tmp_path / "key.pem"
    f.write_text("x")
    f.chmod(0)
    assert "Permission denied" in fails(capsys, "--api-ssl-key", str(f))


def test_error_path_must_be_a_directory(capsys, tmp_path):
    err = fails(capsys, "--error-path", str(tmp_path / "missing"))
    assert err.startswith("error: option '--error-path <path>'") and "not a directory" in err
    f = tmp_path / "file"
    f.write_text("x")
    assert "not a directory" in fails(capsys, "--error-path", str(f))
    assert cfg("--error-path", str(tmp_path)).error_path == str(tmp_path)


@pytest.mark.parametrize("flag", ["--default-target", "--error-target"])
@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host/", "http://", "http://h:99999",
                                 "nonsense"])
def test_unreachable_target_url_is_an_error_naming_the_flag(capsys, flag, url):
    err = fails(capsys, flag, url)
    assert err.startswith(f"error: option '{flag} <host>' argument '{url}' is invalid")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://h/x?q=1",
                                 "http+unix://%2Ftmp%2Fs.sock", "unix+http://%2Ftmp%2Fs"])
def test_reachable_target_urls_are_accepted(url):
    assert cfg("--default-target", url).default_target == url


def test_error_target_gets_a_trailing_slash():
    assert cfg("--error-target", "http://127.0.0.1:8081/hub/error").error_target == \
        "http://127.0.0.1:8081/hub/error/"
    assert cfg("--error-target", "http://h/e/").error_target == "http://h/e/"


def test_redirect_port_without_certificates_is_chp_error(capsys):
    assert fails(capsys, "--redirect-port", "8080") == \
        "HTTPS redirection specified but certificates not provided."


def test_redirect_port_with_certificate_is_accepted(certs):
    c = cfg("--redirect-port", "8080", "--redirect-to", "443", "--ssl-cert", certs.server_cert,
            "--ssl-key", certs.server_key)
    assert (c.redirect_port, c.redirect_to) == (8080, "443")  # redirect_to stays a string (Q18)


def test_file_that_is_not_pem_is_an_error_naming_the_flag(capsys):
    err = fails(capsys, "--ssl-cert", __file__)
    assert err.startswith("error:") and "--ssl-cert" in err


def test_wrong_key_passphrase_is_an_error_naming_the_flag(capsys, certs, monkeypatch):
    monkeypatch.setenv("CONFIGPROXY_SSL_KEY_PASSPHRASE", "wrong")
    err = fails(capsys, "--ssl-key", certs.server_key_encrypted, "--ssl-cert", certs.server_cert)
    assert err.startswith("error:") and "--ssl-key" in err


def test_good_tls_material_is_accepted(certs, monkeypatch):
    monkeypatch.setenv("CONFIGPROXY_API_SSL_KEY_PASSPHRASE", certs.passphrase)
    c = cfg("--api-ssl-key", certs.server_key_encrypted, "--api-ssl-cert", certs.server_cert,
            "--api-ssl-ca", certs.ca_cert, env=dict(os.environ))
    assert c.api_tls and c.api_ssl_key_passphrase == certs.passphrase


def test_error_target_and_error_path_together_is_chp_error(capsys, tmp_path):
    assert fails(capsys, "--error-target", "http://h/", "--error-path", str(tmp_path)) == \
        "Cannot specify both error-target and error-path. Pick one."


@pytest.mark.parametrize("spec,problem", [
    ("no_such_module_xyz:Store", "cannot import 'no_such_module_xyz'"),
    ("json:NoSuchStore", "has no attribute 'NoSuchStore'"),
    ("justaname", "expected 'package.module:Class'"),
])
def test_bad_storage_backend_is_an_error_naming_the_flag(capsys, spec, problem):
    err = fails(capsys, "--storage-backend", spec)
    assert err.startswith("error: option '--storage-backend <storage-class>'") and problem in err


def test_importable_storage_backend_is_accepted():
    spec = "cfproxy.store.memory:MemoryStore"
    assert cfg("--storage-backend", spec).storage_backend == spec
    assert cfg("--storage-backend", "redis://127.0.0.1:6379/0").storage_backend.startswith("redis")


# --- environment (reference 1.5) ----------------------------------------------------------


def test_environment_supplies_token_and_passphrases():
    c = cfg(env={"CONFIGPROXY_AUTH_TOKEN": "t0k", "CONFIGPROXY_SSL_KEY_PASSPHRASE": "p1",
                 "CONFIGPROXY_API_SSL_KEY_PASSPHRASE": "p2"})
    assert (c.auth_token, c.ssl_key_passphrase, c.api_ssl_key_passphrase) == ("t0k", "p1", "p2")


def test_empty_token_means_no_token():
    assert cfg(env={"CONFIGPROXY_AUTH_TOKEN": ""}).auth_token is None


def test_flags_jupyterhub_passes_are_accepted(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("not really a pem")
    c = cfg("--ip", "", "--port", "8000", "--api-ip", "127.0.0.1", "--api-port", "8001",
            "--error-target", "http://127.0.0.1:8081/hub/error", "--log-level", "info",
            "--host-routing", "--client-ssl-request-cert", "--client-ssl-reject-unauthorized")
    assert (c.ip, c.port, c.api_port, c.host_routing) == ("", 8000, 8001, True)


# --- installation ----------------------------------------------------------------------


def _installed_scripts() -> Path | None:
    """The bin dir of this interpreter's environment if cfproxy is installed into it."""
    bindir = Path(sys.executable).parent
    if (bindir / "cfproxy").exists() and (bindir / "configurable-http-proxy").exists():
        return bindir
    return None


def test_pip_install_gives_both_console_scripts(tmp_path):
    """`pip install .` installs `cfproxy` and `configurable-http-proxy`, both the same CLI.

    Under .ci/run (and the README's test command) the package is installed into the venv
    and its console scripts are checked directly; from a bare checkout, the package is
    installed into a temporary prefix (no deps, no build isolation, no network).
    """
    env = dict(os.environ)
    bindir = _installed_scripts()
    if bindir is None:
        pytest.importorskip("wheel", reason="needs `wheel` to build without build isolation")
        src = tmp_path / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        shutil.copytree(ROOT / "cfproxy", src / "cfproxy",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        prefix = tmp_path / "prefix"
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--no-index", "--prefix", str(prefix), str(src)],
            capture_output=True, text=True, timeout=120,
            env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        assert r.returncode == 0, r.stderr
        env["PYTHONPATH"] = str(next(prefix.glob("lib/python*/site-packages")))
        bindir = prefix / "bin"
    for script in ("cfproxy", "configurable-http-proxy"):
        exe = bindir / script
        assert exe.exists(), script
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=30)
        assert (out.returncode, out.stdout) == (0, "5.3.0\n"), out.stderr
        bad = subprocess.run([str(exe), "--bogus"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=30)
        assert bad.returncode == 1 and bad.stderr == "error: unknown option '--bogus'\n"


def test_module_entry_point_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "cfproxy", "--version"], capture_output=True,
                       text=True, cwd=ROOT, timeout=30)
    assert r.stdout == "5.3.0\n"


def test_cli_error_is_raised_as_clierror_by_parse_args():
    with pytest.raises(CLIError, match="--port"):
        parse_args(["--port", "70000"], env={})


CHP_BIN = os.environ.get("CFPROXY_CHP_BIN", "/tmp/chp/node_modules/.bin/configurable-http-proxy")


# flags whose description says more than CHP's (what CHP does but does not say: Q25)
REWORDED = ("--ssl-request-cert", "--api-ssl-request-cert", "--storage-backend")


def _without_rows(lines: list[str], flags: tuple[str, ...]) -> list[str]:
    """Help lines without the rows (first line and continuations) of `flags`."""
    out: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith("  -"):
            skipping = line.split()[0] in flags
        elif not line.startswith("   "):
            skipping = False
        if not skipping:
            out.append(line)
    return out


def test_help_says_a_client_certificate_is_then_required():
    text = run_cli("--help").stdout
    for flag in ("--ssl-request-cert", "--api-ssl-request-cert"):
        row = "\n".join(_rows_of(text, flag))
        assert "without a valid certificate" in " ".join(row.split())
        assert "refused" in row


def _rows_of(text: str, flag: str) -> list[str]:
    lines = text.splitlines()
    keep = [ln for ln in lines if ln not in _without_rows(lines, (flag,))]
    return keep


@pytest.mark.skipif(not os.path.exists(CHP_BIN), reason="CHP 5.3.0 not installed")
def test_help_is_chp_help_plus_our_flags():
    chp = subprocess.run([CHP_BIN, "--help"], capture_output=True, text=True, timeout=30).stdout
    ours = run_cli("--help").stdout
    chp_lines = _without_rows(chp.splitlines(), REWORDED)
    our_lines = _without_rows(ours.splitlines(), REWORDED)
    help_line = chp_lines.pop()  # "-h, --help" comes last in both
    assert our_lines[-1] == help_line
    assert our_lines[:len(chp_lines)] == chp_lines
    added = "\n".join(our_lines[len(chp_lines):-1])
    assert all(flag in added for flag in OUR_FLAGS)


def test_help_names_the_durable_and_the_shared_store():
    row = " ".join(" ".join(_rows_of(run_cli("--help").stdout, "--storage-backend")).split())
    assert "Defaults to in-MemoryStore" in row
    assert "sqlite:////abs/path/routes.db" in row and "synchronous=full" in row
    assert "redis://" in row
