"""JupyterHub configuration for cfproxy's end-to-end tests: the hub starts the proxy itself.

Nothing here configures the proxy's command: the hub runs its default
`configurable-http-proxy`, which must resolve to cfproxy's console script on PATH.
Only addresses are set, so that tests can run in parallel on free loopback ports.
Everything varying comes from the environment the test sets:

  CFPROXY_E2E_DIR          working directory (sqlite db, cookie secret, user homes)
  CFPROXY_E2E_PUBLIC_PORT  the proxy's public port (users and the tests come in here)
  CFPROXY_E2E_API_PORT     the proxy's REST API port
  CFPROXY_E2E_HUB_PORT     the hub's own port (behind the proxy)
  CFPROXY_E2E_API_TOKEN    token of the `e2e` service, allowed to manage users/servers
  CONFIGPROXY_AUTH_TOKEN   (read by JupyterHub itself) the proxy API token
  CFPROXY_E2E_WORKERS      optional: run the proxy with `--workers N` (the default command
                           plus that flag)
"""

import os
import sys

c = get_config()  # noqa: F821 - provided by JupyterHub's config loader

here = os.path.dirname(os.path.abspath(__file__))
work = os.environ["CFPROXY_E2E_DIR"]

c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['CFPROXY_E2E_PUBLIC_PORT']}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["CFPROXY_E2E_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['CFPROXY_E2E_API_PORT']}"

c.JupyterHub.db_url = f"sqlite:///{os.path.join(work, 'jupyterhub.sqlite')}"
c.JupyterHub.cookie_secret_file = os.path.join(work, "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = os.path.join(work, "jupyterhub-proxy.pid")
if os.environ.get("CFPROXY_E2E_WORKERS"):
    c.ConfigurableHTTPProxy.command = ["configurable-http-proxy", "--workers",
                                       os.environ["CFPROXY_E2E_WORKERS"]]

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True

# A local process per user, running the tiny HTTP + WebSocket server next to this file.
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(work, "home", "{username}")
c.Spawner.cmd = [sys.executable, os.path.join(here, "singleuser.py")]
c.Spawner.default_url = "/"
c.Spawner.start_timeout = 30
c.Spawner.http_timeout = 20

# A service token the tests use for the hub's REST API (through the proxy).
c.JupyterHub.services = [{"name": "e2e", "api_token": os.environ["CFPROXY_E2E_API_TOKEN"]}]
c.JupyterHub.load_roles = [{
    "name": "e2e-admin",
    "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "proxy"],
    "services": ["e2e"],
}]

c.JupyterHub.log_level = "DEBUG"
