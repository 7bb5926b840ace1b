"""ASGI entry point for the production server and the in-process server (embedded).

HTTP passes the request-body bound first, then the lean heartbeat path, which
answers routine heartbeats itself and hands every other request to Django.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from monitoring.ingest.asgi import HeartbeatFastPath, lifespan  # noqa: E402
from omoi_console.foundation.request_limits import BoundedRequestBody  # noqa: E402
from omoi_console.foundation.websocket_auth import (  # noqa: E402
    AllowedHostsOrigin,
    WebsocketAuthMiddleware,
)
from omoi_console.top.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": BoundedRequestBody(HeartbeatFastPath(django_asgi_app)),
        "websocket": AllowedHostsOrigin(WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns))),
        "lifespan": lifespan,
    }
)
