"""ASGI entry point for daphne (production) and the in-process server (embedded)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from omoi_console.foundation.rate_limits import IngestRateLimits  # noqa: E402
from omoi_console.foundation.rate_windows import RecentlyVerified  # noqa: E402
from omoi_console.foundation.request_limits import BoundedRequestBody  # noqa: E402
from omoi_console.foundation.websocket_auth import AllowedHostsOrigin, WebsocketAuthMiddleware  # noqa: E402
from omoi_console.top.routing import websocket_urlpatterns  # noqa: E402

# Credentials the app accepted lately count as known-good, so that agents behind
# an address that floods bad tokens keep getting through.
verified_credentials = RecentlyVerified()
ingest_limits = IngestRateLimits(
    django_asgi_app,
    is_known_good=verified_credentials,
    on_verified=verified_credentials.add,
    on_refused=verified_credentials.discard,
)

application = ProtocolTypeRouter(
    {
        "http": BoundedRequestBody(ingest_limits),
        "websocket": AllowedHostsOrigin(WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
