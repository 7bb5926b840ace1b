"""Production's connection pool: a burst wider than Postgres allows still gets answers."""

import asyncio

import httpx
import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def max_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        return int(cursor.fetchone()[0])


async def burst(base_url: str, size: int) -> list[int]:
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        responses = await asyncio.gather(*(client.get("/healthz") for _ in range(size)))
    return [r.status_code for r in responses]


def test_it_answers_more_concurrent_requests_than_postgres_has_connections(server):
    # Under ASGI each request in flight runs in its own thread; without the pool
    # each would open a connection of its own and Postgres would refuse the rest.
    size = max_connections() + 20

    statuses = asyncio.run(burst(server.base_url, size))

    assert statuses == [200] * size
