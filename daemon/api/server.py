"""`lipsyncd api`: the API on uvicorn, one process, at api.listen (or --listen); under systemd it says
READY once it listens and pings the watchdog from its event loop (a stuck loop stops the pings)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog
import uvicorn

from daemon.api.app import create_app
from daemon.config import Config
from daemon.ops.systemd import Notifier, watchdog_interval

log = structlog.get_logger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, notifier: Notifier, interval: float | None) -> None:
        super().__init__(config)
        self.notifier, self.interval = notifier, interval
        self._beats: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("api_ready", listen=f"{self.config.host}:{self.config.port}")
            self.notifier.ready(f"listening on {self.config.host}:{self.config.port}")
            if self.interval:
                self._beats = asyncio.create_task(self._beat(self.interval / 2))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.stopping()
        if self._beats is not None:
            self._beats.cancel()
        await super().shutdown(sockets)

    async def _beat(self, every: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(every)


def serve(config: Config, listen: str, environ: Mapping[str, str] | None = None) -> None:
    host, port = split_listen(listen)
    notifier = Notifier.from_environ(os.environ, unset=True)
    interval = watchdog_interval(os.environ)
    app = create_app(config, os.environ if environ is None else environ)
    server = _Server(
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
        ),
        notifier,
        interval,
    )
    log.info("api_starting", listen=listen, hashes_file=str(app.state.api.tokens.path))
    server.run()
