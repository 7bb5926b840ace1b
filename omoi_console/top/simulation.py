"""A simulated fleet: agents that heartbeat over real HTTP with real tokens.

Each agent runs a coroutine: heartbeat, obey the commands in the response
(restart: pause briefly, come back idle and acknowledge), sleep one interval.
``silence`` makes an agent hang right after its next heartbeat: it goes quiet
for an outage, then its harness reconnects and reports the agent failed until a
restart command arrives. Only remediation brings it back, so a gameday's
recovery proves that the watchdog healed it rather than that time passed.

Agents behave like clients built on an agent SDK: a heartbeat that fails (a
dropped connection, a 5xx, a 429) is retried with exponential backoff and full
jitter, never sooner than the server's Retry-After, for as long as the wait
fits in one interval; after that the heartbeat is given up and the next one
is due as usual.
"""

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from django.utils import timezone

from monitoring import services as monitoring
from monitoring.models import AgentRole
from omoi_console.top.agent_http import AgentConnection, AgentResponse, TransportError

RESTART_SECONDS = 0.2
# The first retry waits up to this long; each later one up to twice the one before.
RETRY_BASE_SECONDS = 0.05
ROLE_MIX = ((AgentRole.WORKER, 0.8), (AgentRole.MONITOR, 0.1), (AgentRole.SCHEDULER, 0.1))


@dataclass
class SimAgent:
    id: str
    role: str
    token: str
    interval: float
    beats: int = 0
    restarts: int = 0
    generation: int = 0  # of the last restart obeyed, echoed in every heartbeat
    task_number: int = 0
    progress: float = 0.0
    acks: list[int] = field(default_factory=list)
    reported: str = "running"
    wedged: bool = False
    silence_after_next: float | None = None
    hold_off: float = 0.0  # a Retry-After longer than the retries could wait
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


def retry_after_seconds(response: AgentResponse | None) -> float | None:
    """The delay a response's ``Retry-After`` asks for, in seconds, if it gives one."""
    if response is None:
        return None
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - timezone.now()).total_seconds())


def backoff_seconds(attempt: int) -> float:
    """Full jitter: a random wait up to ``RETRY_BASE_SECONDS * 2**attempt``."""
    return random.uniform(0, RETRY_BASE_SECONDS * 2**attempt)  # noqa: S311


def worth_retrying(status: int) -> bool:
    """Whether an agent SDK would send a request again after this answer."""
    return status == 429 or status >= 500


class SimulatedFleet:
    """The agents' heartbeat loops, and counts of what they met on the wire.

    ``transport_errors`` counts failed attempts (no answer), ``retries`` the
    attempts sent again, ``recovered`` the heartbeats that got through after a
    retry and ``unrecovered`` those given up once the retries no longer fitted in
    the interval. ``sleep`` is how the agents wait: tests pass one that moves a
    frozen clock instead.
    """

    def __init__(self, base_url: str, agents: list[SimAgent], sleep=asyncio.sleep):
        self.base_url = base_url
        self.agents = {a.id: a for a in agents}
        self.responses: Counter[int] = Counter()
        self.transport_errors = 0
        # What the failed attempts met (ConnectError, ReadTimeout ...), for the report.
        self.transport_error_kinds: Counter[str] = Counter()
        self.retries = 0
        self.recovered = 0
        self.unrecovered = 0
        self._sleep = sleep
        # One client (one keep-alive connection) per agent, as real agents have:
        # a shared pool with a thousand requests in flight spends its time
        # matching requests to connections.
        self._clients: dict[str, AgentConnection] = {}
        self._tasks: list[asyncio.Task] = []

    async def open(self) -> None:
        """Give every agent its HTTP connection (opened on its first heartbeat)."""
        self._clients = {
            agent_id: AgentConnection(self.base_url, timeout=10.0) for agent_id in self.agents
        }

    async def start(self) -> None:
        await self.open()
        self._tasks = [asyncio.create_task(self._run(a)) for a in self.agents.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(client.close() for client in self._clients.values()))

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
            restart = await self.heartbeat(agent)
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
            wait, agent.hold_off = max(agent.interval, agent.hold_off), 0.0
            await asyncio.sleep(wait)

    async def heartbeat(self, agent: SimAgent) -> bool:
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
            "generation": agent.generation,
        }
        response = await self._send(agent, body)
        if response is None or response.status_code != 200:
            return False
        agent.beats += 1
        agent.acks = []
        agent.reported = "running"
        restart = False
        for command in response.json()["commands"]:
            agent.acks.append(command["id"])
            if command["kind"] == "recycle_token":
                agent.token = command["params"]["token"]
            if command["kind"] == "restart":
                restart = True
                agent.generation = command.get("generation") or agent.generation
                agent.wedged = False
                agent.restarts += 1
                agent.reported = "idle"
                agent.task_number += 1
                agent.progress = 0.0
        return restart

    async def _send(self, agent: SimAgent, body: dict) -> AgentResponse | None:
        """POST one heartbeat, retrying failures within the interval; None when given up."""
        attempt, waited = 0, 0.0
        while True:
            response = None
            try:
                response = await self._clients[agent.id].post_json(
                    f"/api/v1/agents/{agent.id}/heartbeat",
                    body,
                    headers={"Authorization": f"Bearer {agent.token}"},
                )
            except TransportError as exc:
                self.transport_errors += 1
                self.transport_error_kinds[exc.kind] += 1
            else:
                self.responses[response.status_code] += 1
                if not worth_retrying(response.status_code):
                    self.recovered += attempt > 0
                    return response
            hinted = retry_after_seconds(response)
            delay = max(backoff_seconds(attempt), hinted or 0.0)
            if waited + delay > agent.interval:
                self.unrecovered += 1
                agent.hold_off = hinted or 0.0
                return None
            self.retries += 1
            attempt, waited = attempt + 1, waited + delay
            await self._sleep(delay)


def fleet_prefix(kind: str) -> str:
    return f"{kind}-{timezone.now():%m%d%H%M%S}{random.randrange(16**2):02x}"  # noqa: S311
