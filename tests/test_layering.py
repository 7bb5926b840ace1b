"""Imports point down only: watchdog -> alerting -> monitoring -> observability.

omoi_console has two floors: ``omoi_console/foundation`` (the bus, API plumbing,
tokens, auth, roles, request limits) and the Event models sit below every app
and import none; ``omoi_console/top`` (console, gameday, simulation, embedded
server) sits above every app. The project plumbing beside them (settings, urls,
asgi, celery, commands) wires the two together.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ["observability", "monitoring", "alerting", "watchdog"]  # bottom to top
FOUNDATION = [
    "omoi_console/foundation",
    "omoi_console/models.py",
    "omoi_console/admin.py",
]
TOP = "omoi_console/top"
# The client agents and operator tools install: it speaks HTTP to the console and
# imports none of its code, nor Django.
CLIENT = "omoi_client"
CONSOLE_PACKAGES = {*APPS, "omoi_console", "django", "rest_framework", "channels"}


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


def client_violations(root: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(root)} imports {module}"
        for path in python_files(CLIENT, root)
        for module in sorted(imported_modules(path))
        if top_package(module) in CONSOLE_PACKAGES
    ]


def test_it_keeps_the_client_free_of_the_console():
    assert python_files(CLIENT)
    assert client_violations() == []


def test_it_keeps_every_module_of_the_project_package_on_a_floor():
    package = ROOT / "omoi_console"
    plumbing = {
        "__init__.py",
        "settings.py",
        "celery.py",
        "asgi.py",
        "wsgi.py",
        "urls.py",
        "apps.py",
        "tasks.py",
    }
    loose = [
        path.name
        for path in package.glob("*.py")
        if path.name not in plumbing and f"omoi_console/{path.name}" not in FOUNDATION
    ]
    assert loose == []
    assert (package / "foundation").is_dir() and (package / TOP.split("/")[1]).is_dir()


def test_the_checker_catches_upward_and_top_layer_imports(tmp_path):
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "probe.py").write_text(
        "from watchdog.models import RemediationAction\n"
        "from omoi_console.top.gameday import GameDay\n"
        "from omoi_console.foundation.events import publish\n"
    )
    assert sorted(violations_for("monitoring", {"observability", "monitoring"}, tmp_path)) == [
        "monitoring/probe.py imports omoi_console.top.gameday (not foundation)",
        "monitoring/probe.py imports watchdog.models",
    ]


def test_the_checker_catches_the_client_importing_the_console(tmp_path):
    (tmp_path / "omoi_client").mkdir()
    (tmp_path / "omoi_client" / "probe.py").write_text(
        "import httpx\nfrom monitoring import samples\nimport django.conf\n"
    )
    assert client_violations(tmp_path) == [
        "omoi_client/probe.py imports django.conf",
        "omoi_client/probe.py imports monitoring",
    ]


def test_it_imports_the_client_without_loading_the_console():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, omoi_client; print(' '.join({m.split('.')[0] for m in sys.modules}))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "httpx" in loaded
    assert CONSOLE_PACKAGES.isdisjoint(loaded)
