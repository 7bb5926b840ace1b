"""``AlertRule.clean``: every field checked against its kind, one message per field."""

import re
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError

from alerting import matchers as matcher_text
from alerting.rules.base import KIND_FIELDS

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]*)\}")
TEMPLATED_ANNOTATIONS = ("summary", "description", "runbook_url")
MIN_WINDOW = timedelta(minutes=1)
MIN_EVALUATE_EVERY = timedelta(seconds=1)


def is_set(value) -> bool:
    return value not in (None, "", [], {})


def clean_rule(rule) -> None:
    """Raise ValidationError naming each field that is wrong for the rule's kind."""
    from alerting.rules import KINDS

    problems: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        problems.setdefault(field, []).append(message)

    kind = KINDS.get(rule.kind)
    if kind is None:
        add("kind", f"Unknown kind {rule.kind!r}; choose one of {', '.join(sorted(KINDS))}.")
        raise ValidationError(problems)
    for field in KIND_FIELDS:
        value = getattr(rule, field)
        if is_set(value) and field not in kind.uses:
            add(field, f"{kind.name} rules do not use {field}; leave it empty.")
        elif not is_set(value) and field in kind.requires:
            add(field, f"{kind.name} rules need {field}.")
    _check_metric(rule, add)
    _check_durations(rule, add)
    _check_params(rule, kind, add)
    for field, messages in kind.clean(rule).items():
        for message in messages:
            add(field, message)
    known = kind.labels_of(rule) | set(rule.labels or {}) | {"value"}
    _check_template("summary", rule.summary, known, add)
    if isinstance(rule.annotations, dict):
        for name in TEMPLATED_ANNOTATIONS:
            if isinstance(rule.annotations.get(name), str):
                _check_template("annotations", rule.annotations[name], known, add, name)
    if problems:
        raise ValidationError(problems)


def _check_metric(rule, add) -> None:
    from monitoring import catalog

    spec = catalog.get(rule.metric) if rule.metric else None
    if rule.metric and spec is None:
        add("metric", f"{rule.metric!r} is not a metric of the catalogue.")
    declared = set(spec.labels) if spec is not None else None
    if is_set(rule.matchers):
        try:
            parsed = matcher_text.parse_all(rule.matchers)
        except ValueError as exc:
            add("matchers", f"{exc}.")
        else:
            unknown = sorted({m.label for m in parsed} - declared) if declared is not None else []
            if unknown:
                add("matchers", f"{rule.metric} has no label {', '.join(unknown)}.")
    if is_set(rule.group_by):
        names = rule.group_by
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            add("group_by", "A list of label names, e.g. ['agent'].")
        elif len(set(names)) != len(names):
            add("group_by", "A label is named twice.")
        elif declared is not None and (unknown := sorted(set(names) - declared)):
            add("group_by", f"{rule.metric} has no label {', '.join(unknown)}.")


def _check_durations(rule, add) -> None:
    longest = timedelta(days=settings.METRIC_ROLLUP_RETENTION_DAYS or 3650)
    if rule.window is not None and not MIN_WINDOW <= rule.window <= longest:
        add("window", f"A window is 1 minute to {longest.days} days (the rollups' retention).")
    for field in ("for_duration", "keep_firing_for"):
        value = getattr(rule, field)
        if value is not None and not timedelta(0) <= value <= timedelta(days=7):
            add(field, "A duration of 0 to 7 days.")
    every = rule.evaluate_every
    if every is not None and not MIN_EVALUATE_EVERY <= every <= timedelta(hours=1):
        add("evaluate_every", "Between 1 second and 1 hour.")


def _check_params(rule, kind, add) -> None:
    params = rule.params if rule.params is not None else {}
    if not isinstance(params, dict):
        add("params", "An object of parameter names and values.")
        return
    for name in sorted(set(params) - set(kind.params)):
        known = ", ".join(sorted(kind.params)) or "none"
        add("params", f"{kind.name} rules have no parameter {name!r} (they have: {known}).")
    for name, param in kind.params.items():
        if name not in params:
            if param.required:
                add("params", f"{kind.name} rules need the parameter {name!r}: {param.help}")
            continue
        if param.check is not None:
            try:
                param.check(params[name])
            except ValueError as exc:
                add("params", f"{name}: {exc}")


def _check_template(field: str, text: str, known: set[str], add, name: str = "") -> None:
    where = f"{name}: " if name else ""
    rest = PLACEHOLDER.sub("", text or "")
    if "{" in rest or "}" in rest:
        add(field, f"{where}unbalanced brace; placeholders are {{label}}, e.g. {{agent_id}}.")
    unknown = sorted(set(PLACEHOLDER.findall(text or "")) - known)
    if unknown:
        add(
            field,
            f"{where}unknown placeholder {', '.join('{' + u + '}' for u in unknown)}; "
            f"this rule's alerts carry {', '.join(sorted(known))}.",
        )
