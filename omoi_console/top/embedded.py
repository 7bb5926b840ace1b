"""The whole app in this process: uvicorn on a loopback socket plus the ticker.

uvicorn rather than daphne because Twisted's reactor cannot be restarted: a
second run in one process (a second gameday in a test session) would fail.
"""

import asyncio
import contextlib
import socket

import uvicorn
from asgiref.sync import sync_to_async
from django.db import connections

from omoi_console.foundation.events.broadcast import bind_server_loop
from omoi_console.top.ticker import Ticker


class _Server(uvicorn.Server):
    # The embedding command owns SIGINT/SIGTERM; uvicorn must not take them.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class EmbeddedApp:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, ticker_periods=None, with_ticker=True
    ):
        self.host = host
        self.requested_port = port
        self.ticker = Ticker(ticker_periods) if with_ticker else None
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        from omoi_console.asgi import application

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            application,
            lifespan="on",
            log_config=None,
            access_log=False,
            http="httptools",
            # As the production web line: longer than any agent's idle gap.
            timeout_keep_alive=65,
            ws="websockets-sansio",
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise why it could not start
            await asyncio.sleep(0.01)
        self.loop = asyncio.get_running_loop()
        bind_server_loop(self.loop)
        if self.ticker is not None:
            self.ticker.start()

    async def stop(self) -> None:
        if self.ticker is not None and self._server is not None:
            await asyncio.to_thread(self.ticker.stop)
        bind_server_loop(None)
        if self._server is not None:
            self._server.should_exit = True
            await self._task


def in_thread(func):
    """Run ORM work from async code on a worker thread that leaves no connection open."""

    def closing(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    return sync_to_async(closing, thread_sensitive=False)
