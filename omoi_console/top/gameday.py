"""Gameday: prove the whole loop against a simulated fleet, with timings and trace ids.

anomaly (heartbeat lost) -> alert -> notification -> remediation -> verified
recovery -> resolved, each stage read back from what the system recorded.
"""

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

import structlog
import websockets
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from alerting.models import Notification, NotificationKind, NotificationStatus
from monitoring.models import Agent, AgentRole
from monitoring.services import failed_after_seconds
from observability import store
from observability.models import LogRecord, SpanRecord
from omoi_console.foundation.roles import VIEWER, grant_role
from omoi_console.models import Event, OperatorToken
from omoi_console.top.embedded import EmbeddedApp, in_thread
from omoi_console.top.fleet_process import FleetProcess
from omoi_console.top.simulation import fleet_prefix, register_fleet, retire_fleet

log = structlog.get_logger(__name__)

GAMEDAY_USER = "gameday"
POLL_SECONDS = 0.1
SETTLE_SECONDS = 1.0
START_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class StageSpec:
    key: str
    label: str
    event: str | None  # the bus event that proves the stage, if any


STAGES = (
    StageSpec("heartbeat_lost", "heartbeat lost", "monitor.agent.heartbeat_lost"),
    StageSpec("alert_fired", "alert fired", "monitor.alert.triggered"),
    StageSpec("console_updated", "console updated (live)", None),
    StageSpec("notification_sent", "notification sent", None),
    StageSpec("remediation_started", "remediation started", "watchdog.action.started"),
    StageSpec("agent_back", "agent back", "monitor.agent.recovered"),
    StageSpec("alert_resolved", "alert resolved", "monitor.alert.resolved"),
    StageSpec("remediation_verified", "remediation verified", "watchdog.action.succeeded"),
)
EVENT_STAGES = {s.event: s.key for s in STAGES if s.event}
# The whole loop is one trace: the failure's, from the missed heartbeat through
# the alert, the notification and the restart, to the heartbeat that answers the
# restart and what its recovery closes (the restart command carries the trace).
LOOP = tuple(s.key for s in STAGES)


@dataclass
class Stage:
    key: str
    label: str
    at: datetime | None = None
    trace_id: str = ""
    detail: str = ""


@dataclass
class Options:
    agents: int = 20
    interval: float = 5.0
    objective: float | None = None
    outage: float | None = None


@dataclass
class Report:
    run: str
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)


def _agent_of(event: Event) -> str | None:
    payload = event.payload
    return payload.get("agent_id") or (payload.get("labels") or {}).get("agent_id")


def read_stages(victim: str, since: datetime, stages: dict[str, Stage]) -> None:
    """Fill in stages from the events and notifications recorded since the fault."""
    events = Event.objects.filter(occurred_at__gte=since, name__in=EVENT_STAGES).order_by(
        "occurred_at"
    )
    alert_id = None
    for event in events:
        if _agent_of(event) != victim:
            continue
        if event.name == "watchdog.action.started" and event.payload.get("dry_run"):
            stages["remediation_started"].detail = "dry run only"
            continue
        stage = stages[EVENT_STAGES[event.name]]
        if event.name == "monitor.alert.triggered":
            alert_id = event.payload["alert_id"]
        if stage.at is None:
            stage.at, stage.trace_id = event.occurred_at, event.trace_id
    sent = stages["notification_sent"]
    if alert_id is not None and sent.at is None:
        first = (
            Notification.objects.filter(
                alert_id=alert_id, kind=NotificationKind.FIRING, status=NotificationStatus.SENT
            )
            .order_by("sent_at")
            .first()
        )
        if first is not None:
            sent.at, sent.trace_id, sent.detail = first.sent_at, first.trace_id, first.channel


def stored_of(trace_id: str) -> dict[str, int] | None:
    """How many of the trace's spans and log lines the console's own store holds."""
    if not trace_id or not settings.TRACE_STORE:
        return None
    store.flush()
    return {
        "spans": SpanRecord.objects.filter(trace_id=trace_id).count(),
        "log_lines": LogRecord.objects.filter(trace_id=trace_id).count(),
    }


def create_observer() -> tuple[str, int]:
    """A viewer account and token for the gameday's own console connection."""
    user, _ = get_user_model().objects.get_or_create(username=GAMEDAY_USER)
    grant_role(user, VIEWER)
    token, raw = OperatorToken.issue(user=user, name="gameday")
    return raw, token.pk


def victim_heartbeat(agent_id: str) -> datetime:
    return Agent.objects.get(pk=agent_id).last_heartbeat_at


def written_heartbeat_after(agent_id: str, before: datetime | None) -> datetime:
    """The victim's last heartbeat as stored: routine heartbeats are written in
    batches, so the one it just sent may land a flush interval after its answer."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        latest = victim_heartbeat(agent_id)
        if latest != before:
            return latest
        time.sleep(settings.INGEST_FLUSH_SECONDS / 2)
    return victim_heartbeat(agent_id)


def finish(agent_ids: list[str], token_pk: int | None) -> None:
    retire_fleet(agent_ids, reason="gameday finished")
    if token_pk is not None:
        OperatorToken.objects.get(pk=token_pk).revoke()


class GameDay:
    def __init__(self, options: Options, write=print, log_level: int = logging.INFO):
        self.options = options
        self.write = write
        # What the simulated fleet's own process logs (to the terminal).
        self.log_level = log_level
        self.run_id = fleet_prefix("gd")
        self.failed_after = failed_after_seconds(options.interval)
        self.objective = options.objective or self.failed_after + 10.0
        # The hung agent comes back one interval after it was declared failed,
        # by when the watchdog has had its restart queued.
        self.outage = options.outage or self.failed_after + options.interval
        self.stages = {s.key: Stage(s.key, s.label) for s in STAGES}
        self.t0: datetime | None = None  # the faulty agent's last heartbeat
        self.console_messages: list[dict] = []
        self.report = Report(run=self.run_id)
        self.stored: dict[str, int] | None = None

    async def run(self) -> Report:
        periods = {"monitoring.tasks.check_heartbeats": min(1.0, self.options.interval / 4)}
        app = EmbeddedApp(ticker_periods=periods)
        # The fleet's process sets itself up while the agents are registered: the
        # registration starts their deadlines.
        fleet = FleetProcess(log_level=self.log_level)
        await fleet.launch()
        agents, observer_pk, listener = [], None, None
        try:
            agents = await in_thread(register_fleet)(
                self.run_id, self.options.agents, self.options.interval
            )
            observer_token, observer_pk = await in_thread(create_observer)()
            await app.start()
            listener = asyncio.create_task(self._listen(app, observer_token))
            await fleet.start(app.base_url, agents)
            await self._exercise(fleet, agents)
        finally:
            if listener is not None:
                listener.cancel()
            await fleet.stop()
            await app.stop()
            await in_thread(finish)([a.id for a in agents], observer_pk)
        self.stored = await in_thread(stored_of)(self._loop_trace())
        self._judge(fleet)
        return self.report

    async def _exercise(self, fleet: FleetProcess, agents) -> None:
        self.write(self._header(agents))
        if not await fleet.wait_until_all_reported(START_TIMEOUT_SECONDS):
            self.report.failures.append("the fleet did not come up")
            return
        victim = next(a for a in agents if a.role == AgentRole.WORKER)
        before = await in_thread(victim_heartbeat)(victim.id)
        await fleet.silence(victim.id, self.outage)
        t0 = await in_thread(written_heartbeat_after)(victim.id, before)
        self.report.facts.update(victim=victim.id, fault_at=t0.isoformat())
        self.write(f"  fault: {victim.id} went silent after its heartbeat at {t0:%H:%M:%S.%f}"[:-3])
        self.t0 = t0
        deadline = time.monotonic() + self.objective + 5.0
        settled_at = None
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            await in_thread(read_stages)(victim.id, t0, self.stages)
            self._read_console(victim.id)
            if self.stages["alert_resolved"].at is not None:
                settled_at = settled_at or time.monotonic()
                if all(s.at for s in self.stages.values()):
                    break
                if time.monotonic() - settled_at > SETTLE_SECONDS:
                    break  # the loop has closed; a missing stage will not come now

    async def _listen(self, app: EmbeddedApp, token: str) -> None:
        url = f"ws://{app.host}:{app.port}/ws/console/"
        headers = {"Authorization": f"Bearer {token}", "Origin": f"http://{app.host}"}
        async with websockets.connect(url, additional_headers=headers) as socket:
            async for raw in socket:
                message = json.loads(raw)
                message["received_at"] = timezone.now()
                self.console_messages.append(message)

    def _read_console(self, victim: str) -> None:
        stage = self.stages["console_updated"]
        if stage.at is not None:
            return
        for message in self.console_messages:
            for event in message.get("events") or [message.get("event") or {}]:
                labels = (event.get("payload") or {}).get("labels") or {}
                triggered = event.get("name") == "monitor.alert.triggered"
                if triggered and labels.get("agent_id") == victim:
                    stage.at, stage.trace_id = message["received_at"], event["trace_id"]
                    stage.detail = "websocket"
                    return

    def _header(self, agents) -> str:
        roles = {}
        for agent in agents:
            roles[agent.role] = roles.get(agent.role, 0) + 1
        mix = ", ".join(f"{n} {role}" for role, n in roles.items())
        layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
        self.report.facts.update(
            fleet=len(agents),
            interval_seconds=self.options.interval,
            failed_after_seconds=self.failed_after,
            objective_seconds=self.objective,
            database=connection.vendor,
            channel_layer=layer,
            watchdog=settings.WATCHDOG_MODE,
        )
        return (
            f"Omoi Console gameday {self.run_id}\n"
            f"  fleet: {len(agents)} agents ({mix}), heartbeat every {self.options.interval:g}s, "
            f"FAILED after {self.failed_after:g}s\n"
            f"  database: {connection.vendor}, channel layer: {layer}, "
            f"watchdog: {settings.WATCHDOG_MODE}"
        )

    def _judge(self, fleet: FleetProcess | None) -> None:
        report = self.report
        t0 = self.t0
        previous = 0.0
        for spec in STAGES:
            stage = self.stages[spec.key]
            row = {"key": stage.key, "label": stage.label, "ok": stage.at is not None}
            if stage.at is not None and t0 is not None:
                offset = (stage.at - t0).total_seconds()
                row.update(
                    at=stage.at.isoformat(),
                    offset_seconds=round(offset, 3),
                    since_previous_seconds=round(offset - previous, 3),
                    trace_id=stage.trace_id,
                    detail=stage.detail,
                )
                previous = offset
            else:
                row["detail"] = stage.detail
                report.failures.append(f"stage did not happen: {stage.label}")
            report.stages.append(row)
        self._judge_traces()
        back = self.stages["agent_back"].at
        if back is not None and t0 is not None:
            loss_to_recovery = (back - t0).total_seconds()
            report.facts["loss_to_recovery_seconds"] = round(loss_to_recovery, 3)
            if loss_to_recovery > self.objective:
                report.failures.append(
                    f"loss to recovery {loss_to_recovery:.1f}s exceeds {self.objective:g}s"
                )
        report.facts["console_messages"] = len(self.console_messages)
        # A fleet that never started has no counts.
        if fleet is not None and getattr(fleet, "responses", None) is not None:
            report.facts["heartbeats"] = {
                "responses": {str(k): v for k, v in sorted(fleet.responses.items())},
                "transport_errors": fleet.transport_errors,
                "transport_error_kinds": dict(fleet.transport_error_kinds),
                "retries": fleet.retries,
                "recovered": fleet.recovered,
                "unrecovered": fleet.unrecovered,
            }
            # A failure that a retry recovered within the interval is what a real
            # client rides out; a 5xx is our bug, and a lost heartbeat is a miss.
            if fleet.server_errors:
                report.failures.append(f"{fleet.server_errors} server errors during the run")
            if fleet.unrecovered:
                report.failures.append(
                    f"{fleet.unrecovered} heartbeats lost after retries "
                    f"({fleet.transport_errors} failed connections during the run)"
                )
        report.passed = not report.failures

    def _loop_traces(self) -> dict[str, str]:
        """The trace id of each stage of the loop that happened."""
        return {key: self.stages[key].trace_id for key in LOOP if self.stages[key].at}

    def _loop_trace(self) -> str:
        """The loop's one trace id, or "" when its stages are not one trace."""
        ids = set(self._loop_traces().values())
        return ids.pop() if len(ids) == 1 else ""

    def _judge_traces(self) -> None:
        """One trace id for the whole loop, in the console's store too, or a failure saying why."""
        trace_id = self._loop_trace()
        seen = self._loop_traces()
        if trace_id:
            self.report.facts["trace_id"] = trace_id
        elif seen:
            self.report.failures.append(
                "the loop is not one trace: "
                + ", ".join(f"{key}={trace_id or '-'}" for key, trace_id in seen.items())
            )
        if self.stored is None:
            return
        self.report.facts["stored"] = self.stored
        # Log lines depend on the store's level (OMOI_LOG_STORE_LEVEL); spans are always kept.
        if not self.stored["spans"]:
            self.report.failures.append("the console's store holds no span of the loop's trace")

    def render(self) -> str:
        report = self.report
        lines = ["", f"  {'stage':<24}{'offset':>9}{'+prev':>9}  trace"]
        for row in report.stages:
            if row["ok"]:
                lines.append(
                    f"  {row['label']:<24}{row['offset_seconds']:>8.2f}s"
                    f"{row['since_previous_seconds']:>8.2f}s  {row['trace_id'] or '-'}"
                )
            else:
                note = f" ({row['detail']})" if row.get("detail") else ""
                lines.append(f"  {row['label']:<24}{'MISSING':>9}{'':>9}  -{note}")
        facts = report.facts
        if facts.get("trace_id"):
            stored = facts.get("stored")
            kept = f" ({stored['spans']} spans, {stored['log_lines']} log lines)" if stored else ""
            lines.append(f"  trace of the loop: {facts['trace_id']}{kept}")
        if "loss_to_recovery_seconds" in facts:
            lines.append(
                f"\n  loss to recovery: {facts['loss_to_recovery_seconds']:.2f}s "
                f"(objective {facts['objective_seconds']:g}s)"
            )
        if "heartbeats" in facts:
            beats = facts["heartbeats"]
            lines.append(
                f"  heartbeats: {sum(beats['responses'].values())} answered {beats['responses']}, "
                f"{beats['transport_errors']} failed connections, {beats['retries']} retries "
                f"({beats['recovered']} recovered, {beats['unrecovered']} lost)"
            )
        for failure in report.failures:
            lines.append(f"  FAIL: {failure}")
        lines.append(f"  result: {'PASS' if report.passed else 'FAIL'}")
        return "\n".join(lines)

    def write_report(self, path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self.report), indent=2, default=str) + "\n")
