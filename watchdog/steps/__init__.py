"""Remediation steps, one module each, found by kind: ``get_step("drain").act(ctx)``.

Adding a step is one module here that subclasses ``StepKind`` and calls
``register``; policies, the orchestrator and the API take it from the registry.
"""

import importlib
import pkgutil

from watchdog.steps.base import Outcome, StepContext, StepKind

STEPS: dict[str, StepKind] = {}


def register(step_class: type[StepKind]) -> type[StepKind]:
    if step_class.name in STEPS:
        raise ValueError(f"step {step_class.name!r} is registered twice")
    STEPS[step_class.name] = step_class()
    return step_class


def get_step(name: str) -> StepKind:
    try:
        return STEPS[name]
    except KeyError:
        raise ValueError(f"unknown step {name!r}; known: {', '.join(sorted(STEPS))}") from None


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_discover()

__all__ = ["STEPS", "Outcome", "StepContext", "StepKind", "get_step", "register"]
