"""Stand-ins for the client's time and a transport that watches (and can lose) its traffic."""

import asyncio
import gzip
import json

import httpx


class FakeTime:
    """The client's clock and sleep.

    With ``auto`` every sleep passes at once, moving the clock (and the
    time-machine ``traveller``, when given, so the served app sees the time
    pass too). Without it a sleep waits until ``advance`` moves the clock past
    its end.
    """

    def __init__(self, *, auto: bool = True, traveller=None):
        self.auto = auto
        self.traveller = traveller
        self.now = 0.0
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.auto:
            self._move(seconds)
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self._move(seconds)
        due = [(end, future) for end, future in self._sleepers if end <= self.now]
        for entry in due:
            self._sleepers.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)

    def _move(self, seconds: float) -> None:
        self.now += seconds
        if self.traveller is not None:
            self.traveller.shift(seconds)


class Recording(httpx.AsyncBaseTransport):
    """Passes requests to ``inner`` and keeps each with its answer's status.

    ``lose_answers`` ingest answers are thrown away after the console has
    handled the request, as when a connection breaks on the way back.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, lose_answers: int = 0):
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.lose_answers = lose_answers
        self.exchanges: list[tuple[httpx.Request, int | None, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.exchanges.append((request, None, None))
            raise
        await response.aread()
        self.exchanges.append((request, response.status_code, response.headers.get("retry-after")))
        if self.lose_answers and request.url.path.endswith("/metrics/ingest"):
            self.lose_answers -= 1
            await response.aclose()
            raise httpx.ReadError("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def ingests(self) -> list[httpx.Request]:
        return [r for r, _, _ in self.exchanges if r.url.path.endswith("/metrics/ingest")]

    def statuses(self) -> list[int | None]:
        return [status for _, status, _ in self.exchanges]


def sent_samples(request: httpx.Request) -> list[dict]:
    body = request.content
    if request.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return json.loads(body)["samples"]


async def eventually(condition, seconds: float = 15.0) -> None:
    """Until ``condition()`` holds: for work the client does in the background."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.01)
