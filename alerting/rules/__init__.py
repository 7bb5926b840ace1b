"""Rule kinds, one module each, found by name: ``get_kind("threshold").evaluate(rule, now)``.

Adding a kind is one module here that subclasses ``RuleKind`` and calls
``register``; the admin, the API and the evaluator take it from the registry.
"""

import importlib
import pkgutil

from alerting.rules.base import KIND_FIELDS, Match, Param, RuleKind

KINDS: dict[str, RuleKind] = {}


def register(kind_class: type[RuleKind]) -> type[RuleKind]:
    if kind_class.name in KINDS:
        raise ValueError(f"rule kind {kind_class.name!r} is registered twice")
    KINDS[kind_class.name] = kind_class()
    return kind_class


def get_kind(name: str) -> RuleKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown rule kind {name!r}; known: {', '.join(sorted(KINDS))}") from None


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("base", "checks"):
            importlib.import_module(f"{__name__}.{module.name}")


_discover()

from alerting.rules.checks import clean_rule  # noqa: E402 (needs the registry filled)

__all__ = [
    "KINDS",
    "KIND_FIELDS",
    "Match",
    "Param",
    "RuleKind",
    "clean_rule",
    "get_kind",
    "register",
]
