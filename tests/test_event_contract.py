"""docs/monitoring/events.md and the code's catalogue describe the same events."""

import re
from pathlib import Path

from omoi_console.foundation.events.catalog import CATALOG

DOC = Path(__file__).resolve().parent.parent / "docs" / "monitoring" / "events.md"
HEADING = re.compile(r"^### `([a-z_.]+)`\s*$")
FIELD_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|")


def documented_events() -> dict[str, list[str]]:
    events: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if heading := HEADING.match(line):
            current = heading.group(1)
            events[current] = []
        elif current and (row := FIELD_ROW.match(line)):
            events[current].append(row.group(1))
    return events


def test_it_documents_every_event_with_exactly_its_fields():
    documented = documented_events()
    assert sorted(documented) == sorted(CATALOG)
    for name, fields in CATALOG.items():
        assert sorted(documented[name]) == sorted(fields), name
