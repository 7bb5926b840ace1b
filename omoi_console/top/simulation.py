"""A simulated fleet: agents that heartbeat over real HTTP with real tokens.

Each agent runs a coroutine: heartbeat, obey the commands in the response
(restart: pause briefly, come back idle and acknowledge), sleep one interval.
``silence`` makes an agent hang right after its next heartbeat: it goes quiet
for an outage, then its harness reconnects and reports the agent failed until a
restart command arrives. Only remediation brings it back, so a gameday's
recovery proves that the watchdog healed it rather than that time passed.
"""

import asyncio
import random
import ssl
from collections import Counter
from dataclasses import dataclass, field

import httpx
from django.utils import timezone

from monitoring import services as monitoring
from monitoring.models import AgentRole

RESTART_SECONDS = 0.2
ROLE_MIX = ((AgentRole.WORKER, 0.8), (AgentRole.MONITOR, 0.1), (AgentRole.SCHEDULER, 0.1))


@dataclass
class SimAgent:
    id: str
    role: str
    token: str
    interval: float
    beats: int = 0
    restarts: int = 0
    task_number: int = 0
    progress: float = 0.0
    acks: list[int] = field(default_factory=list)
    reported: str = "running"
    wedged: bool = False
    silence_after_next: float | None = None
    last_beat_done: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)


def roles_for(size: int) -> list[str]:
    roles = []
    for role, share in ROLE_MIX[1:]:
        roles += [role] * max(1 if size >= 5 else 0, round(size * share))
    return [AgentRole.WORKER] * (size - len(roles)) + roles


def register_fleet(prefix: str, size: int, interval: float) -> list[SimAgent]:
    """Register ``size`` agents named ``<prefix>-<role>-NN``; return them with their tokens."""
    specs = [
        monitoring.NewAgent(f"{prefix}-{role}-{number:02d}", role, {"fleet": prefix}, interval)
        for number, role in enumerate(roles_for(size), start=1)
    ]
    registered = monitoring.register_agents(specs, actor="simulation")
    return [SimAgent(agent.id, agent.role, token, interval) for agent, token in registered]


def retire_fleet(agent_ids: list[str], reason: str) -> None:
    monitoring.terminate_agents(agent_ids, reason=reason, actor="simulation")


class SimulatedFleet:
    def __init__(self, base_url: str, agents: list[SimAgent]):
        self.base_url = base_url
        self.agents = {a.id: a for a in agents}
        self.responses: Counter[int] = Counter()
        self.transport_errors = 0
        # One client (one keep-alive connection) per agent, as real agents have:
        # a shared pool with a thousand requests in flight spends its time
        # matching requests to connections.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        # One TLS context for all: building one per client reads the CA bundle
        # each time (about 50 ms), a minute for a thousand agents.
        tls = ssl.create_default_context()
        self._clients = {
            agent_id: httpx.AsyncClient(base_url=self.base_url, timeout=10.0, verify=tls)
            for agent_id in self.agents
        }
        self._tasks = [asyncio.create_task(self._run(a)) for a in self.agents.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.responses.items() if status >= 500)

    async def wait_until_all_reported(self, timeout: float) -> bool:
        async def all_beat():
            while not all(a.beats for a in self.agents.values()):
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(all_beat(), timeout)
        except TimeoutError:
            return False
        return True

    async def silence(self, agent_id: str, outage: float) -> None:
        """Let the agent send one more heartbeat, then go quiet for ``outage`` seconds."""
        agent = self.agents[agent_id]
        agent.last_beat_done.clear()
        agent.silence_after_next = outage
        await agent.last_beat_done.wait()

    async def _run(self, agent: SimAgent) -> None:
        # Spread the fleet over one interval, as real agents would be.
        await asyncio.sleep(random.uniform(0, agent.interval))  # noqa: S311
        while True:
            restart = await self._beat(agent)
            if agent.silence_after_next is not None:
                outage, agent.silence_after_next = agent.silence_after_next, None
                agent.last_beat_done.set()
                await asyncio.sleep(outage)
                agent.wedged = True
                continue
            agent.last_beat_done.set()
            if restart:
                await asyncio.sleep(RESTART_SECONDS)
                continue  # report straight back after a restart
            await asyncio.sleep(agent.interval)

    async def _beat(self, agent: SimAgent) -> bool:
        """One heartbeat; True when the response asked for a restart (now done)."""
        agent.progress = min(1.0, agent.progress + 0.1)
        if agent.progress >= 1.0:
            agent.task_number += 1
            agent.progress = 0.0
        reported = "failed" if agent.wedged else agent.reported
        body = {
            "state": reported,
            "task_id": f"task-{agent.task_number}" if reported == "running" else "",
            "progress": agent.progress if reported == "running" else None,
            "acks": agent.acks,
        }
        try:
            response = await self._clients[agent.id].post(
                f"/api/v1/agents/{agent.id}/heartbeat",
                json=body,
                headers={"Authorization": f"Bearer {agent.token}"},
            )
        except httpx.HTTPError:
            self.transport_errors += 1
            return False
        self.responses[response.status_code] += 1
        if response.status_code != 200:
            return False
        agent.beats += 1
        agent.acks = []
        agent.reported = "running"
        restart = False
        for command in response.json()["commands"]:
            agent.acks.append(command["id"])
            if command["kind"] == "restart":
                restart = True
                agent.wedged = False
                agent.restarts += 1
                agent.reported = "idle"
                agent.task_number += 1
                agent.progress = 0.0
        return restart


def fleet_prefix(kind: str) -> str:
    return f"{kind}-{timezone.now():%m%d%H%M%S}{random.randrange(16**2):02x}"  # noqa: S311
