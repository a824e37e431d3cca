"""`lipsyncd api`: the API on uvicorn, one process, at api.listen (or --listen)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import structlog
import uvicorn

from daemon.api.app import create_app
from daemon.config import Config

log = structlog.get_logger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def serve(config: Config, listen: str, environ: Mapping[str, str] | None = None) -> None:
    host, port = split_listen(listen)
    app = create_app(config, os.environ if environ is None else environ)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # our structlog setup; uvicorn's access log would repeat each request
            access_log=False,
            server_header=False,
            proxy_headers=False,  # a proxy's X-Forwarded-For is not trusted by default
            timeout_keep_alive=30,
            timeout_graceful_shutdown=10,  # long polls and event streams end within this on SIGTERM
            lifespan="on",
        )
    )
    log.info("api_listening", listen=listen, tokens=str(app.state.api.tokens.path))
    server.run()
