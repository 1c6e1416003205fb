# cfproxy as a container: a drop-in for the jupyterhub/configurable-http-proxy
# image (same entrypoint conventions, ports, user), with no Node.js inside.
#
#   docker build -t cfproxy .
#   docker run -e CONFIGPROXY_AUTH_TOKEN=... -p 8000:8000 cfproxy \
#       --default-target http://hub:8081 --error-target http://hub:8081/hub/error
#
# Configured entirely through flags (every CHP flag) and CONFIGPROXY_AUTH_TOKEN
# (or CONFIGPROXY_AUTH_TOKEN_FILE); see docs/jupyterhub.md and docs/flags.md.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (and only it) from the build context, then drop the sources.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cfproxy ./cfproxy
RUN pip install . && cd / && rm -rf /src

COPY docker/entrypoint.sh /usr/local/bin/cfproxy-docker-entrypoint
WORKDIR /

# nobody:nogroup, as in CHP's image; nothing is written to disk at run time.
USER 65534:65534

EXPOSE 8000 8001

# The proxy's own health endpoint on the public port. Override the address with
# CFPROXY_HEALTHCHECK_URL (e.g. https://127.0.0.1:8443/_chp_healthz; certificates
# are not verified: this only asks "is the process serving").
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; urllib.request.urlopen(os.environ.get('CFPROXY_HEALTHCHECK_URL', 'http://127.0.0.1:8000/_chp_healthz'), timeout=3, context=ssl._create_unverified_context())"]

ENTRYPOINT ["/usr/local/bin/cfproxy-docker-entrypoint"]
