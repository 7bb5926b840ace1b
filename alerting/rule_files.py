"""Rules as YAML: the shape the API speaks, one document with a list of rules.

    rules:
      - name: queue-depth-high
        kind: threshold
        metric: queue_depth
        aggregation: avg
        window: 5m
        group_by: [agent, queue]
        condition: "> 100"
        for: 2m
        ...

``dump`` writes every rule, sorted by name, each field in the API's order;
``load`` checks every rule of a file with the same serializer as the API and
saves all of them or none. Exporting, importing into an empty installation and
exporting again gives the same text.
"""

from dataclasses import dataclass, field

import yaml
from django.db import transaction

from alerting.api.serializers import RULE_FIELDS, AlertRuleSerializer
from alerting.models import AlertRule


class RuleFileError(Exception):
    """The file cannot be used; ``problems`` lists each reason, by rule and field."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Imported:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def dump() -> str:
    rules = [
        {name: data[name] for name in RULE_FIELDS}
        for data in AlertRuleSerializer(AlertRule.objects.order_by("name"), many=True).data
    ]
    return yaml.safe_dump({"rules": rules}, sort_keys=False, allow_unicode=True, width=100)


def load(text: str, *, prune: bool = False, dry_run: bool = False) -> Imported:
    """Create or update every rule of the file by name; with ``prune``, delete the others."""
    documents = _rules_of(text)
    result = Imported()
    problems = []
    with transaction.atomic():
        existing = {rule.name: rule for rule in AlertRule.objects.select_for_update()}
        for index, document in enumerate(documents):
            name = document.get("name") if isinstance(document, dict) else None
            where = f"rule {name!r}" if isinstance(name, str) else f"rule #{index + 1}"
            current = existing.get(name) if isinstance(name, str) else None
            serializer = AlertRuleSerializer(current, data=document)
            if not serializer.is_valid():
                problems += [f"{where}: {line}" for line in _lines(serializer.errors)]
                continue
            before = AlertRuleSerializer(current).data if current is not None else None
            serializer.save()
            after = AlertRuleSerializer(serializer.instance).data
            if current is None:
                result.created.append(name)
            elif _same(before, after):
                result.unchanged.append(name)
            else:
                result.updated.append(name)
        if problems:
            transaction.set_rollback(True)
            raise RuleFileError(problems)
        if prune:
            named = {document["name"] for document in documents}
            for name, rule in existing.items():
                if name not in named:
                    if rule.alerts.exists():
                        problems.append(f"rule {name!r}: has alerts; disable it instead")
                    else:
                        rule.delete()
                        result.deleted.append(name)
        if problems:
            transaction.set_rollback(True)
            raise RuleFileError(problems)
        if dry_run:
            transaction.set_rollback(True)
    return result


def _rules_of(text: str) -> list:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError([f"not YAML: {exc}"]) from None
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise RuleFileError(["a rule file is a mapping with a list under 'rules'"])
    names = [d.get("name") for d in document["rules"] if isinstance(d, dict)]
    twice = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if twice:
        raise RuleFileError([f"rule {n!r} is in the file twice" for n in twice])
    unknown = sorted(
        {key for d in document["rules"] if isinstance(d, dict) for key in d} - set(RULE_FIELDS)
    )
    if unknown:
        raise RuleFileError([f"unknown field {key!r}" for key in unknown])
    return document["rules"]


def _lines(errors, prefix: str = "") -> list[str]:
    if isinstance(errors, dict):
        return [line for key, value in errors.items() for line in _lines(value, f"{key}: ")]
    if isinstance(errors, list):
        return [line for item in errors for line in _lines(item, prefix)]
    return [f"{prefix}{errors}"]


def _same(before: dict, after: dict) -> bool:
    return all(before[name] == after[name] for name in RULE_FIELDS)
