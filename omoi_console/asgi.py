"""ASGI entry point for the production server and the in-process server (embedded).

HTTP gets its request id (and its access-log line) first, then passes the
request-body bound, then the rate limits, then the lean
ingest paths, which answer routine heartbeats and agents' metric batches
themselves and hand every other request to Django.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from monitoring.ingest.asgi import HeartbeatFastPath, is_known_good, lifespan  # noqa: E402
from monitoring.ingest.batches import MetricBatchFastPath  # noqa: E402
from omoi_console.foundation.rate_limits import IngestRateLimits  # noqa: E402
from omoi_console.foundation.rate_windows import RecentlyVerified  # noqa: E402
from omoi_console.foundation.request_context import RequestContext  # noqa: E402
from omoi_console.foundation.request_limits import BoundedRequestBody  # noqa: E402
from omoi_console.foundation.websocket_auth import (  # noqa: E402
    AllowedHostsOrigin,
    WebsocketAuthMiddleware,
)
from omoi_console.top.routing import websocket_urlpatterns  # noqa: E402

# Credentials the app accepted lately count as known-good, so that agents behind
# an address that floods bad tokens keep getting through: the lean path's cache of
# verified agent tokens, and any other credentials answered with a 2xx lately.
verified_credentials = RecentlyVerified()
ingest_limits = IngestRateLimits(
    HeartbeatFastPath(MetricBatchFastPath(django_asgi_app)),
    is_known_good=lambda header: is_known_good(header) or verified_credentials(header),
    on_verified=verified_credentials.add,
    on_refused=verified_credentials.discard,
)

application = ProtocolTypeRouter(
    {
        "http": RequestContext(BoundedRequestBody(ingest_limits)),
        "websocket": AllowedHostsOrigin(WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns))),
        "lifespan": lifespan,
    }
)
