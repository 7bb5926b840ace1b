"""The alert rule's admin form: fields as operators write them, not raw JSON.

Labels, annotations and the kind's parameters are key/value rows; matchers and
group_by one per line; durations as text (``30s``, ``5m``, ``1h30m``). The kind
selector shows only the fields its kind uses (``static/admin/alerting/rule_form.js``
reads which from the selector's ``data-kind-fields``).
"""

import json

from django import forms
from django.core.exceptions import ValidationError

from alerting import durations
from alerting.models import AlertRule
from alerting.rules import KINDS
from alerting.rules.base import KIND_FIELDS

# Blank rows offered under the filled ones.
EXTRA_ROWS = 2


class KeyValueWidget(forms.Widget):
    template_name = "admin/alerting/key_value.html"

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        if isinstance(value, str):
            try:
                value = json.loads(value or "{}")
            except ValueError:
                value = {}
        if isinstance(value, dict):
            rows = [(key, shown(item)) for key, item in value.items()]
        else:
            rows = list(value or [])
        context["widget"]["rows"] = [*rows, *[("", "")] * EXTRA_ROWS]
        return context

    def value_from_datadict(self, data, files, name):
        keys, values = listed(data, f"{name}__key"), listed(data, f"{name}__value")
        return list(zip(keys, values, strict=False))

    def value_omitted_from_data(self, data, files, name):
        return f"{name}__key" not in data


def listed(data, key: str) -> list:
    """Every value posted under ``key`` (a QueryDict, or a plain dict in tests and scripts)."""
    if hasattr(data, "getlist"):
        return data.getlist(key)
    found = data.get(key, [])
    return list(found) if isinstance(found, list | tuple) else [found]


def shown(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class KeyValueField(forms.Field):
    """A dict from rows of (key, value); with ``json_values`` a value that reads as JSON
    (``true``, ``300``, ``["failed"]``) is taken as such, any other as text."""

    widget = KeyValueWidget

    def __init__(self, *, json_values: bool = False, **kwargs):
        self.json_values = json_values
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value):
        if isinstance(value, dict):
            return value
        found, problems = {}, []
        for key, text in value or []:
            key, text = key.strip(), text.strip()
            if not key and not text:
                continue
            if not key:
                problems.append(f"The value {text[:40]!r} has no key.")
            elif key in found:
                problems.append(f"The key {key!r} appears twice.")
            else:
                found[key] = self.parse(text)
        if problems:
            raise ValidationError(problems)
        return found

    def parse(self, text: str):
        if not self.json_values:
            return text
        try:
            return json.loads(text)
        except ValueError:
            return text


class LinesField(forms.CharField):
    """A list of strings, one per line."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(strip=False, **kwargs)

    def prepare_value(self, value):
        if isinstance(value, list):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value):
        if isinstance(value, list):
            return value
        return [line.strip() for line in (value or "").splitlines() if line.strip()]


class DurationTextField(forms.CharField):
    """A duration as operators write it: 90s, 5m, 1h30m, 2d."""

    def prepare_value(self, value):
        if hasattr(value, "total_seconds"):
            return durations.text(value)
        return value

    def to_python(self, value):
        value = (value or "").strip()
        if not value:
            return None
        try:
            return durations.parse(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def kind_fields() -> dict[str, list[str]]:
    """Which of the kind-specific fields each kind uses (``params`` when it has any)."""
    return {
        name: sorted(kind.uses) + (["params"] if kind.params else [])
        for name, kind in KINDS.items()
    }


def params_help() -> str:
    parts = []
    for name, kind in sorted(KINDS.items()):
        if kind.params:
            listed = "; ".join(f"{key}: {param.help}" for key, param in kind.params.items())
            parts.append(f"{name}: {listed}")
    return "Parameters of the kind, a row each. " + " ".join(parts)


class AlertRuleForm(forms.ModelForm):
    matchers = LinesField(help_text=AlertRule._meta.get_field("matchers").help_text)
    group_by = LinesField(
        help_text="Labels that make one alert each, one per line (e.g. agent); "
        "empty: one alert in all."
    )
    window = DurationTextField(
        required=False, help_text="How far back the aggregation looks, e.g. 5m."
    )
    for_duration = DurationTextField(
        label="For",
        required=True,
        help_text="How long the condition must hold before the alert fires, e.g. 2m (0s: at once).",
    )
    keep_firing_for = DurationTextField(
        required=True,
        help_text="How long a firing alert stays firing after the condition clears, e.g. 5m.",
    )
    evaluate_every = DurationTextField(
        required=True, help_text="How often the rule is evaluated, e.g. 15s."
    )
    labels = KeyValueField(help_text="Labels every alert of the rule carries (routes match them).")
    annotations = KeyValueField(
        help_text="Texts shown with the alert: description, runbook_url (templates over labels)."
    )
    params = KeyValueField(json_values=True)

    class Meta:
        model = AlertRule
        fields = [
            "name",
            "kind",
            "severity",
            "enabled",
            "summary",
            *KIND_FIELDS,
            "params",
            "for_duration",
            "keep_firing_for",
            "evaluate_every",
            "labels",
            "annotations",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["params"].help_text = params_help()
        self.fields["kind"].widget.attrs["data-kind-fields"] = json.dumps(kind_fields())

    class Media:
        js = ["admin/alerting/rule_form.js"]
