"""A simulated agent's HTTP: one keep-alive HTTP/1.1 connection, JSON in and out.

A simulated fleet must cost the machine far less than the server it tests. Measured
on 2 cores against a constant ASGI app, httpx spent about 900 µs of CPU per request
and a bare asyncio stream about 20 µs: with httpx one process keeps about 700
agents to a one-second heartbeat, which made a fleet of thousands a test of the
client. So the agents speak just the HTTP/1.1 the console serves (requests and
answers with a length, or chunked answers), on one connection each, as real agents
with a keep-alive client do.
"""

import asyncio
import contextlib
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

HEAD_LIMIT = 64 * 1024
# How a kept connection that the server closed while idle fails, before any answer.
STALE_CONNECTION = frozenset({"RemoteProtocolError", "ConnectionResetError", "BrokenPipeError"})


class TransportError(Exception):
    """No answer: the connection failed, was closed or timed out. ``kind`` names which."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


@dataclass
class AgentResponse:
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    def json(self):
        return json.loads(self.content)


class AgentConnection:
    def __init__(self, base_url: str, timeout: float = 10.0):
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("simulated agents speak plain HTTP to a local server")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, body, headers: dict[str, str]) -> AgentResponse:
        data = json.dumps(body).encode()
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + data
        reused = self._writer is not None
        try:
            return await self._exchange(request)
        except TransportError as error:
            # A kept-alive connection the server closed while it was idle fails
            # before any answer: any HTTP client sends the request again, once.
            if not reused or error.kind not in STALE_CONNECTION:
                raise
        return await self._exchange(request)

    async def _exchange(self, request: bytes) -> AgentResponse:
        try:
            return await asyncio.wait_for(self._round_trip(request), self.timeout)
        except TimeoutError:
            await self.close()
            raise TransportError("ReadTimeout") from None
        except asyncio.IncompleteReadError as exc:
            await self.close()
            kind = "RemoteProtocolError" if not exc.partial else "ReadError"
            raise TransportError(kind) from None
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise TransportError(type(exc).__name__) from None

    async def _round_trip(self, request: bytes) -> AgentResponse:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=HEAD_LIMIT
            )
        self._writer.write(request)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._read_chunked()
        else:
            content = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return AgentResponse(status, headers, content)

    async def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self._reader.readexactly(size + 2)
            if size == 0:
                return b"".join(chunks)
            chunks.append(chunk[:-2])

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
