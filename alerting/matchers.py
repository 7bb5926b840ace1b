"""Label matchers as Alertmanager writes them: ``a=v``, ``a!=v``, ``a=~regex``, ``a!~regex``.

A regular expression matches the whole value (it is anchored), as in Prometheus.
The same matchers select series in the database (``series_filter``) and test a
label set in Python (``Matcher.matches``), so rules, silences and inhibition
share one meaning.
"""

import re
from dataclasses import dataclass

from django.db.models import Q

from omoi_console.foundation.labels import LABEL_NAME, LABEL_NAME_RULE

MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]{0,62})\s*(=~|!~|!=|=)\s*(.*?)\s*\Z", re.S)
OPERATORS = ("=", "!=", "=~", "!~")
MAX_MATCHERS = 20
MAX_VALUE = 200


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def __str__(self):
        return f"{self.label}{self.op}{self.value}"

    @property
    def pattern(self) -> re.Pattern:
        return re.compile(rf"(?:{self.value})\Z", re.S)

    def matches(self, labels: dict) -> bool:
        """A missing label counts as the empty value, as in Alertmanager."""
        found = str(labels.get(self.label, ""))
        if self.op == "=":
            return found == self.value
        if self.op == "!=":
            return found != self.value
        hit = self.pattern.match(found) is not None
        return hit if self.op == "=~" else not hit

    def q(self, prefix: str) -> Q:
        """The same test as a filter on a JSON column of labels (``prefix`` names it).

        A series without the label is tested as if its value were empty, which
        SQL would otherwise leave out of every comparison (NULL).
        """
        key = f"{prefix}__{self.label}"
        present = Q(**{f"{prefix}__has_key": self.label})
        if self.op in ("=", "!="):
            hit = present & Q(**{key: self.value})
            empty_hit = self.value == ""
        else:
            hit = present & Q(**{f"{key}__regex": rf"^(?:{self.value})$"})
            empty_hit = self.pattern.match("") is not None
        if empty_hit:
            hit |= ~present
        if self.op in ("=", "=~"):
            return hit
        return ~hit


def parse(text) -> Matcher:
    """One matcher from its text; ValueError with the reason when it is not one."""
    if not isinstance(text, str):
        raise ValueError("a matcher is text such as queue=inbox")
    found = MATCHER.match(text)
    if found is None:
        raise ValueError(
            f"{text[:80]!r} is not a matcher: write label=value, label!=value, "
            f"label=~regex or label!~regex (label names are {LABEL_NAME_RULE})"
        )
    label, op, value = found.groups()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not LABEL_NAME.fullmatch(label):
        raise ValueError(f"{label!r}: label names are {LABEL_NAME_RULE}")
    if len(value) > MAX_VALUE or "\x00" in value:
        raise ValueError(f"{label}: a value is at most {MAX_VALUE} characters, without NUL")
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{label}{op}: not a regular expression ({exc})") from None
    return Matcher(label, op, value)


def parse_all(texts) -> list[Matcher]:
    """A list of matchers; ValueError naming each bad one."""
    if not isinstance(texts, list):
        raise ValueError("matchers are a list such as ['queue=inbox', 'agent=~w-.*']")
    if len(texts) > MAX_MATCHERS:
        raise ValueError(f"at most {MAX_MATCHERS} matchers")
    parsed, problems = [], []
    for text in texts:
        try:
            parsed.append(parse(text))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return parsed


def series_filter(matchers: list[Matcher], prefix: str = "labels") -> Q:
    condition = Q()
    for matcher in matchers:
        condition &= matcher.q(prefix)
    return condition


def matches_all(matchers: list[Matcher], labels: dict) -> bool:
    return all(matcher.matches(labels) for matcher in matchers)
