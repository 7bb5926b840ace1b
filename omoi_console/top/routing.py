from django.urls import path, re_path

from omoi_console.top.consumers import ConsoleConsumer, NoSuchFeed

websocket_urlpatterns = [
    path("ws/console/", ConsoleConsumer.as_asgi()),
    # Last: any other path is closed with 4404 instead of failing the handshake.
    re_path(r"", NoSuchFeed.as_asgi()),
]
