"""What one web process knows about the agents it serves.

Two maps: verified ingest tokens (by the SHA-256 of the whole token, never the
token itself) and per-agent snapshots (state, interval, stuck threshold, and for
a stuck agent the task and progress it is stuck on).
Entries are filled by Django's heartbeat view after a request it served in full,
and dropped by invalidations (``invalidation.py``) when anything changes an
agent or revokes a token, in this process or another.

Each agent has a generation that every invalidation bumps; a fill carries the
generation it read before touching the database and is refused if it changed
meanwhile, so a fill can never resurrect what an invalidation just dropped.
"""

import contextlib
import hashlib
import hmac
import threading
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef

from monitoring.models import (
    AgentCommand,
    AgentState,
    AgentToken,
    CommandStatus,
    role_stuck_after,
)
from omoi_console.foundation.tokens import split_token

MAX_ENTRIES = 500_000  # far above any fleet; a bound, not a working size


@dataclass(frozen=True)
class TokenEntry:
    lookup: str
    agent_id: str
    token_id: int
    last_used_at: datetime | None


@dataclass(frozen=True)
class AgentSnapshot:
    state: str
    interval: float
    stuck_after: float  # the role's default threshold, for tasks that name none
    # (task, progress) of a STUCK agent: a heartbeat that repeats them keeps it
    # stuck and changes only liveness; any other leaves STUCK, through Django.
    stuck_on: tuple[str, float | None] | None = None


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class IngestCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenEntry] = {}
        self._agents: dict[str, AgentSnapshot] = {}
        self._generations: dict[str, int] = {}
        self._token_generation = 0
        self._own = threading.local()

    # --- reads (the hot path: plain dict lookups) ---------------------------------

    def token(self, digest: str) -> TokenEntry | None:
        return self._tokens.get(digest)

    def agent(self, agent_id: str) -> AgentSnapshot | None:
        return self._agents.get(agent_id)

    def generation(self, agent_id: str) -> int:
        return self._generations.get(agent_id, 0)

    def generations(self, agent_id: str) -> tuple[int, int]:
        """Read before the database is: (tokens, this agent). See ``remember``."""
        return self._token_generation, self._generations.get(agent_id, 0)

    # --- fills ----------------------------------------------------------------------

    def remember(
        self,
        digest: str,
        token: TokenEntry,
        agent_id: str,
        snapshot: AgentSnapshot | None,
        generations: tuple[int, int],
    ) -> bool:
        """Keep a verified token and the agent's snapshot, unless invalidated since.

        ``generations`` is what ``generations()`` said before the token and the
        agent were read: if any token was revoked or the agent changed since,
        what was read may already be stale, and nothing is kept.
        """
        with self._lock:
            if generations != (self._token_generation, self._generations.get(agent_id, 0)):
                return False
            if len(self._tokens) >= MAX_ENTRIES or len(self._agents) >= MAX_ENTRIES:
                self._tokens.clear()
                self._agents.clear()
            self._tokens[digest] = token
            if snapshot is None:
                self._agents.pop(agent_id, None)
            else:
                self._agents[agent_id] = snapshot
            return True

    def update_state(self, agent_id: str, snapshot: "AgentSnapshot", generation: int) -> None:
        """The batch writer moved the agent: keep serving it, unless invalidated since."""
        with self._lock:
            if self._generations.get(agent_id, 0) == generation:
                self._agents[agent_id] = snapshot

    def touch_token(self, digest: str, used_at: datetime) -> None:
        with self._lock:
            entry = self._tokens.get(digest)
            if entry is not None:
                self._tokens[digest] = TokenEntry(
                    entry.lookup, entry.agent_id, entry.token_id, used_at
                )

    # --- invalidations ------------------------------------------------------------

    @contextlib.contextmanager
    def counting_own_changes(self):
        """Count the agent invalidations this thread causes inside the block.

        A heartbeat that changes its agent's state invalidates the agent on
        commit, and then wants to cache the state it just wrote: it may, if the
        generation moved by exactly its own changes and nobody else's.
        """
        counts: dict[str, int] = {}
        self._own.counts = counts
        try:
            yield counts
        finally:
            self._own.counts = None

    def forget_agents(self, agent_ids) -> None:
        own = getattr(self._own, "counts", None)
        with self._lock:
            for agent_id in agent_ids:
                self._generations[agent_id] = self._generations.get(agent_id, 0) + 1
                self._agents.pop(agent_id, None)
                if own is not None:
                    own[agent_id] = own.get(agent_id, 0) + 1

    def forget_tokens(self, lookups) -> None:
        lookups = set(lookups)
        if not lookups:
            return
        with self._lock:
            self._token_generation += 1
            for digest in [d for d, e in self._tokens.items() if e.lookup in lookups]:
                del self._tokens[digest]

    def forget_all_tokens(self) -> None:
        with self._lock:
            self._token_generation += 1
            self._tokens.clear()

    def forget_agent_tokens(self, agent_ids) -> None:
        agent_ids = set(agent_ids)
        if not agent_ids:
            return
        with self._lock:
            self._token_generation += 1
            for digest in [d for d, e in self._tokens.items() if e.agent_id in agent_ids]:
                del self._tokens[digest]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._agents.clear()
            self._token_generation += 1
            for agent_id in self._generations:
                self._generations[agent_id] += 1


ingest_cache = IngestCache()


def remember_served(raw: str, token, agent, generations: tuple[int, int]) -> bool:
    """After Django's path served a heartbeat: let the lean path answer the next ones."""
    entry = TokenEntry(token.lookup, agent.pk, token.pk, token.last_used_at)
    snapshot = snapshot_of(agent)
    return ingest_cache.remember(token_digest(raw), entry, agent.pk, snapshot, generations)


def snapshot_of(agent) -> AgentSnapshot:
    stuck = agent.state == AgentState.STUCK
    stuck_on = (agent.current_task, agent.task_progress) if stuck else None
    return AgentSnapshot(
        agent.state, agent.interval_seconds, role_stuck_after(agent.role), stuck_on
    )


def verify_agent_token(raw: str, agent_id: str | None) -> bool:
    """Verify an agent token for the lean path with one query, and cache it.

    Only a token of this very agent (of any agent, for ``agent_id`` None: a
    metric batch names no agent in its path), not revoked, whose agent has no
    command waiting (those leave through Django's path), is cached. Anything
    else is left to Django's path, which words the refusal.
    """
    lookup = split_token(raw, AgentToken.KIND)
    if lookup is None:
        return False
    generations = ingest_cache.generations(agent_id or "")
    queued = AgentCommand.objects.filter(agent=OuterRef("agent"), status=CommandStatus.QUEUED)
    tokens = (
        AgentToken.objects.select_related("agent")
        .annotate(commands_waiting=Exists(queued))
        .filter(lookup=lookup, revoked_at__isnull=True)
    )
    token = tokens.filter(agent_id=agent_id).first() if agent_id else tokens.first()
    if token is None or token.commands_waiting:
        return False
    if agent_id is None:
        # Now that the agent is known, verify again the usual way: its generation
        # must be read before its row is.
        return verify_agent_token(raw, token.agent_id)
    if not hmac.compare_digest(token.token_hash, token_digest(raw)):
        return False
    return remember_served(raw, token, token.agent, generations)
