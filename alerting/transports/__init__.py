"""Delivery channels: one module per kind, each registering its Transport.

Importing this package imports every module in it, which fills ``REGISTRY``.
"""

import importlib
import pkgutil

from alerting.transports.base import (
    REGISTRY,
    Transport,
    TransportError,
    describe,
    kind_choices,
    register,
    transport_for,
)

# Every module, so a channel added as a file registers itself.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "REGISTRY",
    "Transport",
    "TransportError",
    "describe",
    "kind_choices",
    "register",
    "transport_for",
]
