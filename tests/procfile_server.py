"""The web tier exactly as the Procfile's `web:` line starts it, as a process group.

It is started the way honcho starts it (through the shell, in a session of its
own) and stopped the way honcho stops it (SIGTERM to the whole group), against
the database the tests use: Postgres' test database by URL, or the SQLite test
database by file (OMOI_SQLITE_PATH).
"""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import connection

PROCFILE = Path(settings.BASE_DIR) / "Procfile"


APPLICATION = "omoi_console.asgi:application"


def web_command(app: str = APPLICATION) -> str:
    """The command of the Procfile's `web:` line, serving `app`."""
    for line in PROCFILE.read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "web":
            assert f" {APPLICATION} " in command, "the web line serves another application"
            return command.strip().replace(APPLICATION, app)
    raise AssertionError("the Procfile has no web: line")


def database_environment() -> dict:
    """Variables that point a server process at the database of this test run."""
    database = connection.settings_dict
    if database["ENGINE"].endswith("postgresql"):
        url = urlsplit(os.environ["DATABASE_URL"])
        # The test run shares Postgres with other processes: a small pool per worker.
        return {
            "DATABASE_URL": urlunsplit(url._replace(path=f"/{database['NAME']}")),
            "DATABASE_POOL_MAX_SIZE": "8",
        }
    return {"OMOI_SQLITE_PATH": str(database["NAME"])}


class ProcfileServer:
    def __init__(self, port: int, log_path: Path, app: str = APPLICATION, **environment: str):
        self.port = port
        self.app = app
        self.log_path = log_path
        self.environment = {
            **os.environ,
            **database_environment(),
            "PORT": str(port),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            # The web tier alone: no Celery worker or beat whose liveness /healthz could see.
            "OMOI_LIVENESS_STALE_SECONDS": "0",
            # Production's log format, whatever the database.
            "LOG_FORMAT": "json",
            # The line's shared metrics directory, kept out of the checkout.
            "PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / "prometheus"),
            **environment,
        }
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline: float = 90) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S602  (the Procfile's own line, as honcho runs it)
                web_command(self.app),
                shell=True,
                start_new_session=True,
                cwd=settings.BASE_DIR,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise AssertionError(f"the web process exited at start:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"the web process did not answer in {deadline} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        """Every live process of the group (the shell, uv, the server and its workers)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                # The command name in field 2 may hold spaces; the fields after it do not.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[2]) == self.process.pid:
                    found.append(int(entry.name))
        return found

    def worker_pids(self) -> set[int]:
        """The processes that serve requests: the ones the server spawned to run the app."""
        workers = set()
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    workers.add(pid)
        return workers

    def rss_bytes(self) -> int:
        """Resident memory of the whole group."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def reload(self) -> None:
        """The documented restart: SIGHUP to the web process."""
        os.kill(self.process.pid, signal.SIGHUP)

    def terminate(self) -> None:
        """What honcho does on stop: SIGTERM to the whole group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def wait_gone(self, deadline: float) -> bool:
        """True once no process of the group is left, False if one still is at the deadline."""
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            self.process.poll()
            if not self.pids():
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the group and leave nothing behind, however the test went."""
        if self.process is None:
            return
        self.terminate()
        if not self.wait_gone(15):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.wait_gone(5)
        self.process.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
