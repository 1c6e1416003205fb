"""JupyterHub configuration for the e2e tests: the proxy runs as its own service.

JupyterHub's documented "running the proxy separately from the hub" set-up,
on top of the base test configuration (jupyterhub_config.py):
the hub does not start or stop the proxy, and it leaves the users' servers
running when it stops, so users keep working while the hub restarts.

  CFPROXY_E2E_PROXY_TOKEN  the token the separately started proxy was given
"""

import os

c = get_config()  # noqa: F821 - provided by JupyterHub's config loader
load_subconfig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "jupyterhub_config.py"))  # noqa: F821

c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.auth_token = os.environ["CFPROXY_E2E_PROXY_TOKEN"]
# api_url is set by the base file (http://127.0.0.1:<api port>)
c.JupyterHub.cleanup_servers = False
