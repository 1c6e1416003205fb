"""The Docker sidecar image, without a Docker engine.

Checks the Dockerfile's structure (base, non-root user, ports, health check, entrypoint,
nothing Node.js), then plays the build in a fresh venv: a build context holding exactly
what the Dockerfile COPYs (filtered by .dockerignore) is `pip install`ed, and the console
scripts and the entrypoint run from it. The entrypoint script's conventions (those of
CHP's chp-docker-entrypoint: CONFIGPROXY_AUTH_TOKEN_FILE, --api-ip=0.0.0.0 prepended
unless --api-ip/--api-socket is given, exec) are checked with a stand-in proxy that
reports its argv and environment, under bash and under POSIX sh.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.proxy_process import TOKEN, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


# --- Dockerfile parsing -------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return out


def only(instrs: list[tuple[str, str]], name: str) -> list[str]:
    return [args for word, args in instrs if word == name]


@pytest.fixture(scope="module")
def instrs() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_dockerfile_builds_from_python_slim_without_node(instrs) -> None:
    assert only(instrs, "FROM") == ["python:3.12-slim"]
    text = DOCKERFILE.read_text().lower()
    for word in ("npm", "nodejs", "apt-get install", "curl"):
        assert word not in "\n".join(a.lower() for _, a in instrs), word
    assert "node " not in text


def test_dockerfile_installs_the_package_with_pip(instrs) -> None:
    runs = only(instrs, "RUN")
    assert any(re.search(r"\bpip install \.(\s|$)", r) for r in runs), runs


def test_dockerfile_runs_as_nobody(instrs) -> None:
    users = only(instrs, "USER")
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid == "65534", users
    # USER comes after every RUN, so nothing at run time has root's rights
    last_user = max(i for i, (w, _) in enumerate(instrs) if w == "USER")
    assert all(i < last_user for i, (w, _) in enumerate(instrs) if w == "RUN")


def test_dockerfile_exposes_proxy_and_api_ports(instrs) -> None:
    ports = " ".join(only(instrs, "EXPOSE")).split()
    assert {"8000", "8001"} <= set(ports), ports


def healthcheck_command(instrs) -> list[str]:
    (hc,) = only(instrs, "HEALTHCHECK")
    cmd = hc[hc.index("CMD") + 3:].strip()
    argv = json.loads(cmd)  # exec form: no shell needed in the image
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def test_healthcheck_uses_python_on_chp_healthz(instrs) -> None:
    argv = healthcheck_command(instrs)
    assert argv[0] == "python"
    assert "/_chp_healthz" in " ".join(argv)
    assert "curl" not in " ".join(argv) and "wget" not in " ".join(argv)


def test_entrypoint_is_the_copied_script(instrs) -> None:
    (ep,) = only(instrs, "ENTRYPOINT")
    argv = json.loads(ep)
    assert len(argv) == 1, argv
    copies = [shlex.split(c) for c in only(instrs, "COPY")]
    assert ["docker/entrypoint.sh", argv[0]] in copies, copies
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh must be executable (COPY keeps mode)"
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")


# --- the build context ----------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory pattern
    covers what is below it; `**` matches any number of directories."""
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        pat = pat.strip("/")
        regex = fnmatch.translate(pat)
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.match(regex, p) for p in prefixes) or (
                pat.startswith("**/") and any(fnmatch.fnmatch(p, pat[3:]) for p in parts)):
            excluded = not negate
    return excluded


def copied_sources(instrs) -> list[str]:
    sources = []
    for args in only(instrs, "COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources += words[:-1]
    return sources


def test_every_copied_source_exists_and_is_in_the_build_context(instrs) -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines()
                if p.strip() and not p.strip().startswith("#")]
    for src in copied_sources(instrs):
        src = src.rstrip("/").removeprefix("./")
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
        assert not dockerignore_excludes(src, patterns), f"COPY {src} is excluded by .dockerignore"
    # what must never go into the image
    for junk in ("tests/test_dockerfile.py", ".git/HEAD", "benchmarks",
                 "cfproxy/__pycache__/app.cpython-311.pyc"):
        assert dockerignore_excludes(junk, patterns), junk
    # the package metadata's readme is needed by `pip install .`
    m = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if m:
        assert m.group(1) in copied_sources(instrs)


def make_build_context(instrs, dest: Path) -> Path:
    """Copy exactly what the Dockerfile's COPY lines take from the repository."""
    for src in copied_sources(instrs):
        src = src.rstrip("/").removeprefix("./")
        s, d = ROOT / src, dest / src
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(s, d)
    return dest


@pytest.fixture(scope="module")
def image_venv(instrs, tmp_path_factory) -> Path:
    """A fresh venv where the Dockerfile's install step (`pip install .`) was run."""
    base = tmp_path_factory.mktemp("image")
    ctx = make_build_context(instrs, base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "-q", str(ctx)],
        capture_output=True, text=True, timeout=240,
    )
    assert r.returncode == 0, f"pip install . failed:\n{r.stdout}\n{r.stderr}"
    return venv


def test_pip_install_in_a_fresh_venv_gives_both_console_scripts(image_venv: Path) -> None:
    for name in ("configurable-http-proxy", "cfproxy"):
        r = subprocess.run([str(image_venv / "bin" / name), "--version"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "5.3.0", r.stdout


def test_installed_package_runs_without_the_source_tree(image_venv: Path, tmp_path: Path) -> None:
    r = subprocess.run([str(image_venv / "bin" / "python"), "-c",
                        "import cfproxy, sys; print(cfproxy.__file__)"],
                       capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(image_venv) in r.stdout and str(ROOT) not in r.stdout


def test_entrypoint_runs_the_installed_proxy(image_venv: Path) -> None:
    env = {**os.environ, "PATH": f"{image_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["sh", str(ENTRYPOINT), "--version"], capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "5.3.0"


def test_image_serves_its_health_check_with_a_token_file(instrs, image_venv: Path,
                                                         tmp_path: Path) -> None:
    """The container's start-up, minus Docker: entrypoint + token file -> proxy serving;
    the HEALTHCHECK command succeeds against it and fails once it is gone."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "CONFIGPROXY_AUTH_TOKEN"}
    env.update(PATH=f"{image_venv / 'bin'}{os.pathsep}{env['PATH']}",
               CONFIGPROXY_AUTH_TOKEN_FILE=str(token_file))
    # loopback only in tests: --api-ip given, so nothing is prepended
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "--ip", "127.0.0.1", "--port", str(port),
         "--api-ip", "127.0.0.1", "--api-port", str(api_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc=proc)
        wait_for_port(api_port, proc=proc)
        hc = healthcheck_command(instrs)
        hc_env = {**os.environ, "CFPROXY_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/_chp_healthz"}
        ok = subprocess.run([str(image_venv / "bin" / "python"), *hc[1:]], env=hc_env,
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr

        import http.client
        for auth, expected in ((f"token {TOKEN}", 200), ("token wrong", 403)):
            c = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
            c.request("GET", "/api/routes", headers={"Authorization": auth})
            assert c.getresponse().status == expected, auth
            c.close()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
    assert proc.returncode in (0, 2), out
    dead = subprocess.run([str(image_venv / "bin" / "python"), *hc[1:]], env=hc_env,
                          capture_output=True, text=True, timeout=30)
    assert dead.returncode != 0


# --- the entrypoint script, with a stand-in proxy ---------------------------------------------

FAKE_PROXY = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid(),
               "token": os.environ.get("CONFIGPROXY_AUTH_TOKEN"),
               "token_file": os.environ.get("CONFIGPROXY_AUTH_TOKEN_FILE")}}, sys.stdout)
    """)

SHELLS = [s for s in ("bash", "sh") if shutil.which(s)]


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fakebin")
    p = d / "configurable-http-proxy"
    p.write_text(FAKE_PROXY.format(python=sys.executable))
    p.chmod(0o755)
    return d


def run_entrypoint(shell: str, fake_bin: Path, *args: str, **env: str) -> tuple[subprocess.Popen, str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("CONFIGPROXY_AUTH_TOKEN", "CONFIGPROXY_AUTH_TOKEN_FILE")}
    e["PATH"] = f"{fake_bin}{os.pathsep}{e['PATH']}"
    e.update(env)
    p = subprocess.Popen([shell, str(ENTRYPOINT), *args], env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=30)
    return p, out, err


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("args, expected", [
    ((), ["--api-ip=0.0.0.0"]),
    (("--port", "8000", "--default-target", "http://hub:8081"),
     ["--api-ip=0.0.0.0", "--port", "8000", "--default-target", "http://hub:8081"]),
    (("--api-port", "9001"), ["--api-ip=0.0.0.0", "--api-port", "9001"]),
    (("--default-target", "http://h/--api-ip"), ["--api-ip=0.0.0.0", "--default-target", "http://h/--api-ip"]),
    (("--api-ips",), ["--api-ip=0.0.0.0", "--api-ips"]),
    (("--api-ip", "10.0.0.1"), ["--api-ip", "10.0.0.1"]),
    (("--port", "1", "--api-ip=::"), ["--port", "1", "--api-ip=::"]),
    (("--api-socket", "/run/chp/api.sock"), ["--api-socket", "/run/chp/api.sock"]),
    (("--api-socket=/run/api.sock",), ["--api-socket=/run/api.sock"]),
    (("--custom-header", "X-A: b  c", "--error-target", ""),
     ["--api-ip=0.0.0.0", "--custom-header", "X-A: b  c", "--error-target", ""]),
])
def test_entrypoint_prepends_api_ip_unless_an_api_address_is_given(shell, fake_bin, args, expected) -> None:
    p, out, err = run_entrypoint(shell, fake_bin, *args)
    assert p.returncode == 0, err
    assert json.loads(out)["argv"] == expected


@pytest.mark.parametrize("shell", SHELLS)
def test_entrypoint_execs_the_proxy_in_its_own_process(shell, fake_bin) -> None:
    p, out, err = run_entrypoint(shell, fake_bin)
    assert json.loads(out)["pid"] == p.pid  # signals from `docker stop` reach the proxy


@pytest.mark.parametrize("shell", SHELLS)
def test_entrypoint_reads_the_token_from_the_token_file(shell, fake_bin, tmp_path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cr3t with space\n\n")
    p, out, err = run_entrypoint(shell, fake_bin, CONFIGPROXY_AUTH_TOKEN_FILE=str(f))
    assert p.returncode == 0, err
    seen = json.loads(out)
    assert seen["token"] == "s3cr3t with space"  # trailing newlines dropped
    assert seen["token_file"] is None  # the _FILE variable is not passed on


@pytest.mark.parametrize("shell", SHELLS)
def test_entrypoint_passes_the_token_from_the_environment(shell, fake_bin) -> None:
    p, out, err = run_entrypoint(shell, fake_bin, CONFIGPROXY_AUTH_TOKEN="abc")
    assert p.returncode == 0, err
    assert json.loads(out)["token"] == "abc"


@pytest.mark.parametrize("shell", SHELLS)
def test_entrypoint_without_token_leaves_the_api_open_to_the_proxy_to_warn(shell, fake_bin) -> None:
    p, out, err = run_entrypoint(shell, fake_bin)
    assert p.returncode == 0, err
    assert json.loads(out)["token"] is None


# bad input


@pytest.mark.parametrize("shell", SHELLS)
def test_entrypoint_refuses_both_token_and_token_file(shell, fake_bin, tmp_path) -> None:
    f = tmp_path / "token"
    f.write_text("x")
    p, out, err = run_entrypoint(shell, fake_bin, CONFIGPROXY_AUTH_TOKEN="a",
                                 CONFIGPROXY_AUTH_TOKEN_FILE=str(f))
    assert p.returncode == 1
    assert out == ""  # the proxy was not started
    assert err.strip() == ("error: both CONFIGPROXY_AUTH_TOKEN and CONFIGPROXY_AUTH_TOKEN_FILE "
                           "are set (but are exclusive)")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("what", ["missing", "directory"])
def test_entrypoint_refuses_an_unreadable_token_file(shell, fake_bin, tmp_path, what) -> None:
    path = tmp_path / "nope" if what == "missing" else tmp_path
    p, out, err = run_entrypoint(shell, fake_bin, CONFIGPROXY_AUTH_TOKEN_FILE=str(path))
    assert p.returncode == 1
    assert out == ""
    assert "CONFIGPROXY_AUTH_TOKEN_FILE" in err and str(path) in err
    assert len(err.strip().splitlines()) == 1


# --- the image is configured by flags: docs/flags.md must list exactly the real ones -----


def help_flags() -> set[str]:
    r = subprocess.run([sys.executable, "-m", "cfproxy", "--help"], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", r.stdout, re.M))


def documented_flags() -> set[str]:
    text = (ROOT / "docs" / "flags.md").read_text()
    return set(re.findall(r"^\| `(?:-\w`, `)?(--[a-z0-9-]+)", text, re.M))


def test_flag_table_documents_every_flag_of_help() -> None:
    flags = help_flags()
    assert {"--port", "--api-socket", "--keep-alive-timeout", "--max-head-size"} <= flags
    assert flags - documented_flags() == set(), "flags missing from docs/flags.md"


def test_flag_table_documents_no_flag_that_does_not_exist() -> None:
    assert documented_flags() - help_flags() == set()
