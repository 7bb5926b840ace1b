"""The simulated fleet in a process of its own.

A thousand agents heartbeating every second is as much client work as server
work: sharing one event loop and one interpreter lock with the server they
test, they starve it. ``FleetProcess`` runs a ``SimulatedFleet`` in a child
process and offers the same coroutines; the parent keeps the server, the
ticker and the console listener. After ``stop()`` the fleet's counters
(responses, transport errors, ...) read as on a ``SimulatedFleet``.
"""

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading

# No Django import at module level: the child process imports this module to
# find its entry point before it has set Django up.


READY = -1  # the child's first message: Django is set up, send the agents


class FleetProcess:
    """``launch()`` early (the child needs a couple of seconds to set Django up), then
    ``start(base_url, agents)`` once the agents are registered and the server listens."""

    def __init__(self, log_level: int = logging.ERROR):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=run_fleet, args=(child, log_level), name="omoi-fleet"
        )
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: threading.Thread | None = None
        self.agents: dict = {}
        self.counters = None

    def __getattr__(self, name):
        # Counters and derived figures (server_errors ...) of the child's fleet.
        if name == "counters" or self.counters is None:
            raise AttributeError(name)
        return getattr(self.counters, name)

    async def launch(self) -> None:
        """Start the child and wait until it is ready to take agents."""
        self._loop = asyncio.get_running_loop()
        ready = self._loop.create_future()
        self._pending[READY] = ready
        await asyncio.to_thread(self._process.start)
        self._reader = threading.Thread(target=self._read, name="omoi-fleet-reader", daemon=True)
        self._reader.start()
        await ready

    async def start(self, base_url: str, agents: list) -> None:
        from omoi_console.top.simulation import SimulatedFleet

        self.agents = {a.id: a for a in agents}
        self.counters = SimulatedFleet(base_url, [])
        # Plain values only: unpickling a model enum would import models before setup.
        specs = [(a.id, str(a.role), a.token, float(a.interval)) for a in agents]
        await self._ask("start", base_url, specs)

    async def wait_until_all_reported(self, timeout: float) -> bool:
        return await self._ask("wait_up", timeout)

    async def silence(self, agent_id: str, outage: float) -> None:
        await self._ask("silence", agent_id, outage)

    async def stop(self) -> None:
        if self._process.is_alive():
            counters = await self._ask("stop")
            for name, value in counters.items():
                if self.counters is not None:
                    setattr(self.counters, name, value)
        await asyncio.to_thread(self._process.join, 30)

    async def _ask(self, kind: str, *args):
        ident = next(self._ids)
        future = self._loop.create_future()
        self._pending[ident] = future
        self._conn.send((kind, ident, args))
        return await future

    def _read(self) -> None:
        while True:
            try:
                ident, result = self._conn.recv()
            except (EOFError, OSError):
                break
            future = self._pending.pop(ident, None)
            if future is not None:
                self._loop.call_soon_threadsafe(_settle, future, result)
        # The child is gone: nobody will answer what is still asked.
        died = RuntimeError("the simulated fleet's process exited")
        for future in self._pending.values():
            self._loop.call_soon_threadsafe(_settle, future, died)


def _settle(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def run_fleet(conn, log_level: int) -> None:
    """The child process: a fleet that obeys its parent's commands until told to stop."""
    import django

    django.setup()
    logging.getLogger().setLevel(log_level)
    logging.getLogger("httpx").setLevel(max(log_level, logging.WARNING))
    asyncio.run(_serve(conn))


async def _serve(conn) -> None:
    from omoi_console.top.simulation import SimAgent, SimulatedFleet

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    fleet = None

    def reply_when_done(ident, coroutine):
        task = loop.create_task(coroutine)
        task.add_done_callback(lambda t: reply(ident, t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def reply(ident, task: asyncio.Task) -> None:
        # Every question gets an answer, a failure too: the parent waits for it.
        if task.cancelled():
            answer = RuntimeError("the simulated fleet's command was cancelled")
        elif task.exception() is not None:
            error = task.exception()
            answer = RuntimeError(f"simulated fleet: {type(error).__name__}: {error}")
        else:
            answer = task.result()
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            conn.send((ident, answer))

    stop_ident = None
    conn.send((READY, True))
    try:
        while stop_ident is None:
            kind, ident, args = await loop.run_in_executor(None, conn.recv)
            if kind == "start":
                base_url, specs = args
                fleet = SimulatedFleet(base_url, [SimAgent(*spec) for spec in specs])
                reply_when_done(ident, fleet.start())
            elif kind == "wait_up":
                reply_when_done(ident, fleet.wait_until_all_reported(*args))
            elif kind == "silence":
                reply_when_done(ident, fleet.silence(*args))
            elif kind == "stop":
                stop_ident = ident
    finally:
        for task in tasks:
            task.cancel()
        if fleet is not None:
            await fleet.stop()
    conn.send((stop_ident, counters_of(fleet) if fleet is not None else {}))


def counters_of(fleet) -> dict:
    """The fleet's public counters, as plain values the parent can take over."""
    return {
        name: value
        for name, value in vars(fleet).items()
        if not name.startswith("_") and isinstance(value, int | float | dict) and name != "agents"
    }
