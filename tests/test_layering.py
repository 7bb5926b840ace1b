"""Imports point down only: watchdog -> alerting -> monitoring -> observability.

omoi_console's foundation (the bus, API plumbing, tokens, roles, models) sits
below every app and imports none; the rest of omoi_console is the top layer.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ["observability", "monitoring", "alerting", "watchdog"]  # bottom to top
FOUNDATION = [
    "omoi_console/events",
    "omoi_console/api",
    "omoi_console/auth.py",
    "omoi_console/tokens.py",
    "omoi_console/models.py",
    "omoi_console/roles.py",
    "omoi_console/environment.py",
    "omoi_console/labels.py",
]


def python_files(relative: str, root: Path = ROOT):
    path = root / relative
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top_package(module: str) -> str:
    return module.split(".")[0]


def is_foundation(module: str) -> bool:
    as_path = module.replace(".", "/")
    return any(as_path == f.removesuffix(".py") or as_path.startswith(f + "/") for f in FOUNDATION)


def violations_for(relative: str, allowed_apps: set[str], root: Path = ROOT) -> list[str]:
    found = []
    for path in python_files(relative, root):
        for module in imported_modules(path):
            package = top_package(module)
            if package in APPS and package not in allowed_apps:
                found.append(f"{path.relative_to(root)} imports {module}")
            if package == "omoi_console" and not is_foundation(module):
                found.append(f"{path.relative_to(root)} imports {module} (not foundation)")
    return found


def test_it_keeps_app_imports_pointing_down():
    problems = []
    for index, app in enumerate(APPS):
        problems += violations_for(app, set(APPS[: index + 1]))
    assert problems == []


def test_it_keeps_the_foundation_free_of_apps():
    problems = []
    for relative in FOUNDATION:
        problems += violations_for(relative, allowed_apps=set())
    assert problems == []


def test_the_checker_catches_upward_and_top_layer_imports(tmp_path):
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "probe.py").write_text(
        "from watchdog.models import RemediationAction\n"
        "from omoi_console.gameday import GameDay\n"
        "from omoi_console.events import publish\n"
    )
    assert sorted(violations_for("monitoring", {"observability", "monitoring"}, tmp_path)) == [
        "monitoring/probe.py imports omoi_console.gameday (not foundation)",
        "monitoring/probe.py imports watchdog.models",
    ]
