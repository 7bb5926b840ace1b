from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from omoi_console.foundation.events.broadcast import CONSOLE_GROUP

# Close codes in the private range: the browser sees why it was turned away.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    """Live feed for the console: every bus event (alone or in batches) and notification."""

    async def connect(self):
        refusal = await self.refusal()
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
        # The feed is one-way: whatever a client sends, JSON or not, is ignored.
        return

    async def event_message(self, message):
        await self.send_json({"type": "event", "event": message["event"]})

    async def events_message(self, message):
        # A batch from one dispatch (a mass outage) stays one frame for the browser too.
        await self.send_json({"type": "events", "events": message["events"]})

    async def notification_message(self, message):
        await self.send_json({"type": "notification", "notification": message["notification"]})


class NoSuchFeed(AsyncJsonWebsocketConsumer):
    """Every websocket path that is not a feed: closed, with a code that says why."""

    async def connect(self):
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)
