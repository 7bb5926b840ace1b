"""The web server exactly as the Procfile starts it, in a process group of its own."""

import http.client
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
APP_MODULE = "omoi_console.asgi"
# module.path:attribute, standing alone (not a host:port, not part of a URL or path)
APP_PATH = re.compile(r"(?<![\w.:/-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)(?![\w.:/-])")
VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")
WORKER_OPTIONS = ("--workers", "-w")


def procfile_command(process: str = "web", procfile: Path = PROCFILE) -> str:
    for line in procfile.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            return command.strip()
    raise SystemExit(f"{procfile.name} has no '{process}:' line")


def with_app(command: str, app_path: str) -> str:
    """The same command line serving another ASGI application."""
    found = [m for m in APP_PATH.finditer(command)]
    ours = [m for m in found if m.group(1) == APP_MODULE] or found
    if len(ours) != 1:
        raise SystemExit(
            f"cannot tell which argument of the web command is the ASGI application "
            f"(candidates: {[m.group(0) for m in found]}): {command}"
        )
    match = ours[0]
    return command[: match.start()] + app_path + command[match.end() :]


def expand(command: str, env: dict[str, str]) -> list[str]:
    """The argument vector the shell would run, for reading options off it."""

    def value(match):
        name = match.group(1) or match.group(3)
        return env.get(name) or (match.group(2) or "")

    return shlex.split(VARIABLE.sub(value, command))


def worker_count(argv: list[str], env: dict[str, str]) -> int:
    for index, arg in enumerate(argv):
        for option in WORKER_OPTIONS:
            if arg == option and index + 1 < len(argv):
                return int(argv[index + 1])
            if arg.startswith(option + "="):
                return int(arg.split("=", 1)[1])
            if option == "-w" and arg.startswith("-w") and arg[2:].isdigit():
                return int(arg[2:])
    # gunicorn and uvicorn both fall back to WEB_CONCURRENCY; daphne runs one process.
    return int(env.get("WEB_CONCURRENCY") or 1)


def session_processes(session: int) -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds so far) of every live process in the session."""
    found = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 of proc(5): session is 6, utime 14, stime 15
        if int(fields[3]) == session:
            found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return found


class WebServer:
    """Runs a command line through the shell, as a Procfile runner does."""

    def __init__(self, command: str, env: dict[str, str], port: int, log: Path):
        self.command = command
        self.env = {**env, "PORT": str(port)}
        self.port = port
        self.log_path = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (the Procfile's own line)
                ["/bin/sh", "-c", self.command],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_until_answering(self, path: str, timeout: float = 90.0) -> None:
        """Return once ``path`` answers 200; fail clearly when the server dies or stays mute."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"the web server exited with {self.process.returncode} before answering:\n"
                    f"  {self.command}\n{self.log_tail()}"
                )
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", path, headers={"Host": "127.0.0.1"})
                response = connection.getresponse()
                response.read()
                connection.close()
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise SystemExit(
            f"the web server did not answer GET {path} with 200 within {timeout:.0f} s "
            f"({last}):\n  {self.command}\n{self.log_tail()}"
        )

    def cpu_seconds(self) -> dict[int, float]:
        return {pid: cpu for pid, (_, cpu) in session_processes(self.process.pid).items()}

    def process_names(self) -> list[str]:
        return sorted(name for name, _ in session_processes(self.process.pid).values())

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("  | " + x for x in text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or not self._group_alive():
            return
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._group_alive():
                self.process.poll()
                time.sleep(0.05)
            if not self._group_alive():
                break
        self.process.poll()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        # A shell that already exited leaves a zombie until it is reaped.
        self.process.poll()
        return bool(session_processes(self.process.pid))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def machine_busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else 0.0


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the processes alive at both moments spent in between."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
