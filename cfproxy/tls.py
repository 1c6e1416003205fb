"""TLS contexts built from the Config (stub; the operations issue fills it in).

    tls = build_tls(config)
    tls.public   ssl.SSLContext | None   for the public listener (--ssl-*)
    tls.api      ssl.SSLContext | None   for the API listener (--api-ssl-*)
    tls.client_context() -> ssl.SSLContext   for https targets / error target
    tls.reload()  re-read certificates (SIGHUP)
"""

from __future__ import annotations

import ssl

from cfproxy.config import Config


class TLSContexts:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.public: ssl.SSLContext | None = None
        self.api: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None

    def client_context(self) -> ssl.SSLContext:
        if self._client is None:
            ctx = ssl.create_default_context()
            if self.config.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._client = ctx
        return self._client

    def reload(self) -> None:
        pass


def build_tls(config: Config) -> TLSContexts:
    return TLSContexts(config)
