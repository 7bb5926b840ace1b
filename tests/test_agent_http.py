"""The simulated agents' HTTP: keep-alive, chunked answers, and a stale connection."""

import asyncio

import pytest

from omoi_console.top.agent_http import AgentConnection, TransportError

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'7\r\n{"ok": \r\n5\r\ntrue}\r\n0\r\n\r\n'
)


async def serve_once_per_connection(answer: bytes):
    """A server that answers one request per connection, then closes it (as an idle
    keep-alive connection is closed), and counts connections."""
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


def test_it_reads_a_chunked_answer_and_resends_once_on_a_connection_closed_while_idle():
    async def scenario():
        server, connections = await serve_once_per_connection(CHUNKED)
        port = server.sockets[0].getsockname()[1]
        agent = AgentConnection(f"http://127.0.0.1:{port}")
        try:
            first = await agent.post_json("/beat", {"state": "running"}, {})
            await connections[0].wait_closed()  # the server closed the kept connection
            second = await agent.post_json("/beat", {"state": "running"}, {})
        finally:
            await agent.close()
            server.close()
        return first, second, len(connections)

    first, second, opened = asyncio.run(scenario())

    assert first.status_code == 200 and first.json() == {"ok": True}
    assert second.json() == {"ok": True}
    assert opened == 2


def test_it_names_a_refused_connection():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(TransportError) as failure:
            await AgentConnection(f"http://127.0.0.1:{port}").post_json("/beat", {}, {})
        return failure.value.kind

    assert asyncio.run(scenario()) == "ConnectionRefusedError"
