import fnmatch
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from opentelemetry import trace

from omoi_console.foundation.events.broadcast import CONSOLE_GROUP
from omoi_console.foundation.labels import LABEL_NAME

SEVERITIES = ("info", "warning", "error", "critical")
MAX_FILTER_BYTES = 4096
MAX_FILTER_ITEMS = 20

# Close codes in the private range: the browser sees why it was turned away.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

tracer = trace.get_tracer(__name__)


class FeedFilter:
    """What one subscriber wants: event names (glob patterns), label values, a severity.

    A client sends ``{"type": "filter", "events": ["monitor.alert.*"],
    "labels": {"owner": "team-a"}, "min_severity": "error"}``; every part is
    optional and an empty filter passes everything. Labels are read from the
    payload's ``labels`` (alerts) or its top-level text fields (agent events);
    ``min_severity`` passes events that carry no severity.
    """

    def __init__(self, events=(), labels=None, min_severity=None):
        self.events = tuple(events)
        self.labels = dict(labels or {})
        self.min_severity = min_severity

    @classmethod
    def parse(cls, message: dict) -> "FeedFilter":
        """A filter from a client's message; ValueError says what is wrong with it."""
        unknown = set(message) - {"type", "events", "labels", "min_severity"}
        if unknown:
            raise ValueError(f"unknown filter fields: {', '.join(sorted(unknown))}")
        events = message.get("events", [])
        if not isinstance(events, list) or len(events) > MAX_FILTER_ITEMS:
            raise ValueError(f"events is a list of at most {MAX_FILTER_ITEMS} name patterns")
        if not all(isinstance(e, str) and 0 < len(e) <= 100 for e in events):
            raise ValueError("each event pattern is text of 1 to 100 characters")
        labels = message.get("labels", {})
        if not isinstance(labels, dict) or len(labels) > MAX_FILTER_ITEMS:
            raise ValueError(f"labels is an object of at most {MAX_FILTER_ITEMS} names")
        for name, value in labels.items():
            if not LABEL_NAME.fullmatch(name) or not isinstance(value, str) or len(value) > 200:
                raise ValueError(f"label {name[:40]!r}: a label name and a text value")
        severity = message.get("min_severity")
        if severity is not None and severity not in SEVERITIES:
            raise ValueError(f"min_severity is one of {', '.join(SEVERITIES)}")
        return cls(events, labels, severity)

    def admits(self, event: dict) -> bool:
        name = event.get("name", "")
        if self.events and not any(fnmatch.fnmatchcase(name, p) for p in self.events):
            return False
        payload = event.get("payload") or {}
        if self.labels:
            labels = payload.get("labels")
            if not isinstance(labels, dict):
                labels = {k: v for k, v in payload.items() if isinstance(v, str)}
            if any(labels.get(k, "") != v for k, v in self.labels.items()):
                return False
        severity = payload.get("severity")
        if self.min_severity and severity in SEVERITIES:
            return SEVERITIES.index(severity) >= SEVERITIES.index(self.min_severity)
        return True


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    """Live feed for the console: every bus event (alone or in batches) and notification,
    narrowed by the filter the subscriber sent, if any (``FeedFilter``)."""

    feed_filter = FeedFilter()

    async def connect(self):
        # A span per connect and per message: the HTTP instrumentation sees none of them.
        with tracer.start_as_current_span("websocket connect console") as span:
            await self._connect(span)

    async def _connect(self, span):
        refusal = await self.refusal()
        span.set_attribute("websocket.close_code", refusal or 0)
        if refusal:
            # Accept, then close: servers answer a close before accept with a bare
            # HTTP 403, and the browser would never learn why it was turned away.
            await self.accept()
            await self.close(code=refusal)
            return
        await self.channel_layer.group_add(CONSOLE_GROUP, self.channel_name)
        await self.accept()

    async def refusal(self) -> int | None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return CLOSE_UNAUTHENTICATED
        if not await database_sync_to_async(user.has_perm)("omoi_console.view_event"):
            return CLOSE_FORBIDDEN
        return None

    async def disconnect(self, code):
        await self.channel_layer.group_discard(CONSOLE_GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        with tracer.start_as_current_span("websocket receive console"):
            await self._receive(text_data)

    async def _receive(self, text_data):
        # A client may only narrow its feed; anything else it sends is ignored.
        if not text_data or len(text_data) > MAX_FILTER_BYTES:
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("type") != "filter":
            return
        try:
            self.feed_filter = FeedFilter.parse(message)
        except ValueError as exc:
            # The previous filter stays; the client learns why this one was refused.
            await self.send_json({"type": "filter.refused", "detail": str(exc)})
            return
        await self.send_json({"type": "filter.accepted"})

    async def event_message(self, message):
        if self.feed_filter.admits(message["event"]):
            await self.send_json({"type": "event", "event": message["event"]})

    async def events_message(self, message):
        # A batch from one dispatch (a mass outage) stays one frame for the browser too.
        wanted = [event for event in message["events"] if self.feed_filter.admits(event)]
        if wanted:
            await self.send_json({"type": "events", "events": wanted})

    async def notification_message(self, message):
        await self.send_json({"type": "notification", "notification": message["notification"]})


class NoSuchFeed(AsyncJsonWebsocketConsumer):
    """Every websocket path that is not a feed: closed, with a code that says why."""

    async def connect(self):
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)
