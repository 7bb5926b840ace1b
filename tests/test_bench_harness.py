"""The heartbeat bench serves whatever the Procfile says: reading that line must not guess."""

import pytest

from bench import webserver, wrk

DAPHNE = "uv run daphne -b 0.0.0.0 -p ${PORT:-8000} omoi_console.asgi:application"
GUNICORN = (
    "uv run gunicorn -k uvicorn.workers.UvicornWorker --workers=${WEB_CONCURRENCY:-3} "
    "-b 0.0.0.0:$PORT omoi_console.asgi:application"
)


def test_it_reads_the_web_line(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"worker: uv run celery -A omoi_console worker\nweb: {DAPHNE}\n")
    assert webserver.procfile_command(procfile=procfile) == DAPHNE


def test_it_swaps_only_the_application_argument():
    swapped = webserver.with_app(GUNICORN, "bench.hello:app")
    assert swapped == GUNICORN.replace("omoi_console.asgi:application", "bench.hello:app")
    assert "0.0.0.0:$PORT" in swapped and "uvicorn.workers.UvicornWorker" in swapped


def test_it_refuses_a_line_without_an_application():
    with pytest.raises(SystemExit, match="ASGI application"):
        webserver.with_app("uv run daphne -b 0.0.0.0 -p 8000", "bench.hello:app")


@pytest.mark.parametrize(
    ("command", "env", "workers"),
    [
        (DAPHNE, {}, 1),
        (GUNICORN, {}, 3),
        (GUNICORN, {"WEB_CONCURRENCY": "4"}, 4),
        ("uv run uvicorn --workers 2 omoi_console.asgi:application", {}, 2),
        ("gunicorn -w2 omoi_console.asgi:application", {}, 2),
    ],
)
def test_it_counts_workers_as_the_server_would(command, env, workers):
    env = {**env, "PORT": "8123"}
    assert webserver.worker_count(webserver.expand(command, env), env) == workers


def test_it_substitutes_the_port():
    assert webserver.expand(DAPHNE, {"PORT": "8123"})[-2] == "8123"


def test_it_writes_a_script_that_paces_each_thread(tmp_path):
    load = wrk.Load(threads=2, connections=64, seconds=5, rate=1000)
    script = wrk.write_script(tmp_path, "paced", [("a-1", "omoi_ag_0123456789ab_s")], load)
    text = script.read_text()
    assert 'local AGENTS = {{"a-1","omoi_ag_0123456789ab_s"}}' in text
    assert "local RATE_PER_THREAD = 500.0" in text
    assert "{RATE}" not in text and "{AGENTS}" not in text
