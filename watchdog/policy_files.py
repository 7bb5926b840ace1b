"""Policies and escalation chains as YAML, with per-environment overrides.

    escalation_chains:
      - name: workers
        levels:
          - {receivers: [oncall], after: 0}
          - {receivers: [team-lead], after: 600}
          - {guardian: true, after: 1800}
    policies:
      - name: restart-failed-worker
        trigger: agent_failed
        steps: [{kind: restart_worker, after: 0, verify: 60}]
        escalation_chain: workers
        ...
    environments:
      staging:
        policies:
          restart-failed-worker: {dry_run: true}
        escalation_chains:
          workers: {levels: [{receivers: [staging-chat], after: 0}]}

The section of the environment in force (``OMOI_ENVIRONMENT``, or ``--environment``)
is laid over the named entries, field by field, before anything is checked.
``load`` checks every chain and policy with the API's serializers and saves all
of them or none; ``dump`` writes what is in force (no ``environments``), so
exporting, importing into an empty installation and exporting again gives the
same text. The ``manual`` policy (operators' actions) is the product's: never
written, read or pruned.
"""

from dataclasses import dataclass, field

import yaml
from django.conf import settings
from django.db import transaction

from watchdog.api.serializers import EscalationChainSerializer, RemediationPolicySerializer
from watchdog.builtins import MANUAL_POLICY
from watchdog.models import EscalationChain, RemediationPolicy

POLICY_FIELDS = [name for name in RemediationPolicySerializer.Meta.fields if name != "id"]
CHAIN_FIELDS = [name for name in EscalationChainSerializer.Meta.fields if name != "id"]
SECTIONS = ("escalation_chains", "policies")
TOP_KEYS = frozenset({*SECTIONS, "environments"})


class PolicyFileError(Exception):
    """The file cannot be used; ``problems`` lists each reason, by entry and field."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Imported:
    environment: str = ""
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


# One entry kind per section: its model, serializer, fields and how it is named in reports.
KINDS = {
    "escalation_chains": (EscalationChain, EscalationChainSerializer, CHAIN_FIELDS, "chain"),
    "policies": (RemediationPolicy, RemediationPolicySerializer, POLICY_FIELDS, "policy"),
}


def dump() -> str:
    document = {}
    for section, (model, serializer, fields, _) in KINDS.items():
        rows = model.objects.order_by("name")
        if model is RemediationPolicy:
            rows = rows.exclude(name=MANUAL_POLICY)
        document[section] = [
            {name: _ordered(name, data[name]) for name in fields}
            for data in serializer(rows, many=True).data
        ]
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def load(
    text: str, *, prune: bool = False, dry_run: bool = False, environment: str | None = None
) -> Imported:
    """Create or update every chain and policy of the file by name; with ``prune``,
    delete the others. All or nothing: an invalid file changes nothing."""
    environment = settings.ENVIRONMENT if environment is None else environment
    document = _document_of(text, environment)
    result = Imported(environment=environment)
    with transaction.atomic():
        problems = []
        for section, (model, serializer_class, _, label) in KINDS.items():
            problems += _apply(document[section], model, serializer_class, label, result)
        if not problems and prune:
            problems += _prune(document, result)
        if problems:
            transaction.set_rollback(True)
            raise PolicyFileError(problems)
        if dry_run:
            transaction.set_rollback(True)
    return result


def _apply(entries, model, serializer_class, label, result) -> list[str]:
    problems = []
    existing = {row.name: row for row in model.objects.select_for_update()}
    for index, entry in enumerate(entries):
        name = entry.get("name")
        where = f"{label} {name!r}" if isinstance(name, str) else f"{label} #{index + 1}"
        if name == MANUAL_POLICY and model is RemediationPolicy:
            problems.append(f"{where}: the manual policy is the product's")
            continue
        current = existing.get(name) if isinstance(name, str) else None
        serializer = serializer_class(current, data=entry)
        if not serializer.is_valid():
            problems += [f"{where}: {line}" for line in _lines(serializer.errors)]
            continue
        before = serializer_class(current).data if current is not None else None
        serializer.save()
        after = serializer_class(serializer.instance).data
        if current is None:
            result.created.append(f"{label} {name}")
        elif before == after:
            result.unchanged.append(f"{label} {name}")
        else:
            result.updated.append(f"{label} {name}")
    return problems


def _prune(document, result) -> list[str]:
    problems = []
    named = {e["name"] for e in document["policies"]}
    for policy in RemediationPolicy.objects.exclude(name__in=[*named, MANUAL_POLICY]):
        if policy.actions.exists():
            problems.append(f"policy {policy.name!r}: has actions; disable it instead")
        else:
            policy.delete()
            result.deleted.append(f"policy {policy.name}")
    named = {e["name"] for e in document["escalation_chains"]}
    for chain in EscalationChain.objects.exclude(name__in=named):
        if chain.policies.exists():
            problems.append(f"chain {chain.name!r}: a policy still names it")
        else:
            chain.delete()
            result.deleted.append(f"chain {chain.name}")
    return problems


def _document_of(text: str, environment: str) -> dict:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyFileError([f"not YAML: {exc}"]) from None
    if not isinstance(document, dict):
        raise PolicyFileError(
            ["a policy file is a mapping with 'policies' and 'escalation_chains'"]
        )
    problems = [f"unknown section {key!r}" for key in sorted(set(document) - TOP_KEYS, key=str)]
    for section in SECTIONS:
        document.setdefault(section, [])
        entries = document[section]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            problems.append(f"{section}: a list of mappings")
            continue
        fields = KINDS[section][2]
        names = [e.get("name") for e in entries]
        twice = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        problems += [f"{section}: {n!r} is in the file twice" for n in twice]
        unknown = sorted({key for e in entries for key in e} - set(fields), key=str)
        problems += [f"{section}: unknown field {key!r}" for key in unknown]
    if problems:
        raise PolicyFileError(problems)
    problems = _override(document, environment)
    if problems:
        raise PolicyFileError(problems)
    return document


def _override(document: dict, environment: str) -> list[str]:
    """Lay the environment's section over the named entries, field by field."""
    environments = document.get("environments") or {}
    if not isinstance(environments, dict):
        return ["environments: a mapping of environment name to overrides"]
    if not environment or environment not in environments:
        return []
    section = environments[environment] or {}
    where = f"environments.{environment}"
    if not isinstance(section, dict) or set(section) - set(SECTIONS):
        return [f"{where}: a mapping with 'policies' and/or 'escalation_chains'"]
    problems = []
    for name in SECTIONS:
        overrides = section.get(name) or {}
        if not isinstance(overrides, dict):
            problems.append(f"{where}.{name}: a mapping of name to fields")
            continue
        entries = {e.get("name"): e for e in document[name]}
        for entry_name, fields in overrides.items():
            if entry_name not in entries:
                problems.append(f"{where}.{name}: {entry_name!r} is not in the file")
            elif not isinstance(fields, dict) or "name" in fields:
                problems.append(f"{where}.{name}.{entry_name}: a mapping of fields (not the name)")
            elif set(fields) - set(KINDS[name][2]):
                unknown = sorted(set(fields) - set(KINDS[name][2]), key=str)
                problems.append(f"{where}.{name}.{entry_name}: unknown field(s) {unknown}")
            else:
                entries[entry_name].update(fields)
    return problems


# PostgreSQL's jsonb keeps its own key order: the file's is restored on the way out.
KEY_ORDER = {
    "levels": ("receivers", "guardian", "after"),
    "steps": ("kind", "after", "verify", "approve"),
}


def _ordered(name: str, value):
    order = KEY_ORDER.get(name)
    if order is None or not isinstance(value, list):
        return value
    return [
        {**{k: item[k] for k in order if k in item}, **item} if isinstance(item, dict) else item
        for item in value
    ]


def _lines(errors, prefix: str = "") -> list[str]:
    if isinstance(errors, dict):
        return [line for key, value in errors.items() for line in _lines(value, f"{key}: ")]
    if isinstance(errors, list):
        return [line for item in errors for line in _lines(item, prefix)]
    return [f"{prefix}{errors}"]
