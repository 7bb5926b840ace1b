"""Production refuses to start without a real SECRET_KEY; embedded needs nothing."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


OURS = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "OMOI_MODE", "CELERY_BROKER_URL"}
BACKENDS = (
    "settings.MODE, settings.DATABASES['default']['ENGINE'], "
    "settings.CELERY_TASK_ALWAYS_EAGER, settings.CHANNEL_LAYERS['default']['BACKEND']"
)
PRODUCTION = {
    "DATABASE_URL": "postgres://u@127.0.0.1:5432/db",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "SECRET_KEY": "k" * 50,
}


def load_settings(tmp_path, show: str = BACKENDS, **env):
    """Import the settings in a fresh interpreter with exactly ``env``; print ``show``."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in OURS and not k.startswith(("EMAIL_", "OMOI_"))
    }
    clean.update(OMOI_DATA_DIR=str(tmp_path), **env)
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='omoi_console.settings'; "
        f"from django.conf import settings; print({show})"
    )
    return subprocess.run(  # noqa: S603  (our own interpreter, fixed code)
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True
    )


def test_it_runs_embedded_with_no_environment(tmp_path):
    result = load_settings(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "embedded",
        "django.db.backends.sqlite3",
        "True",
        "channels.layers.InMemoryChannelLayer",
    ]
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_it_refuses_production_without_a_real_secret_key(tmp_path):
    for key in ("", "short", "django-insecure-" + "x" * 40):
        result = load_settings(tmp_path, **{**PRODUCTION, "SECRET_KEY": key})
        assert result.returncode != 0
        assert "SECRET_KEY" in result.stderr
        assert key not in result.stderr or not key


def test_it_runs_production_on_postgres_and_redis(tmp_path):
    result = load_settings(tmp_path, **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "production",
        "django.db.backends.postgresql",
        "False",
        "channels_redis.core.RedisChannelLayer",
    ]


def test_it_refuses_production_without_redis(tmp_path):
    result = load_settings(tmp_path, **{**PRODUCTION, "REDIS_URL": ""})
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr


def test_it_sends_alert_mail_in_production_only_through_a_real_mail_server(tmp_path):
    show = "settings.ALERT_EMAIL_RECIPIENTS, settings.EMAIL_BACKEND"
    quiet = load_settings(tmp_path, show, **PRODUCTION)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("[] ")  # no recipients: the email channel is off

    nowhere = load_settings(tmp_path, show, OMOI_ALERT_EMAIL_TO="oncall@example.org", **PRODUCTION)
    assert nowhere.returncode != 0
    assert "EMAIL_HOST" in nowhere.stderr

    smtp = load_settings(
        tmp_path,
        show,
        OMOI_ALERT_EMAIL_TO="oncall@example.org",
        EMAIL_HOST="smtp.example.org",
        **PRODUCTION,
    )
    assert smtp.returncode == 0, smtp.stderr
    assert smtp.stdout.split() == [
        "['oncall@example.org']",
        "django.core.mail.backends.smtp.EmailBackend",
    ]


def test_it_pools_postgres_connections_in_production(tmp_path):
    show = "settings.DATABASES['default'].get('OPTIONS', {}).get('pool')"
    pooled = load_settings(tmp_path, show, **PRODUCTION)
    assert pooled.returncode == 0, pooled.stderr
    assert "'max_size': 20" in pooled.stdout

    both = load_settings(tmp_path, show, DATABASE_CONN_MAX_AGE="60", **PRODUCTION)
    assert both.returncode != 0
    assert "DATABASE_POOL_MAX_SIZE=0" in both.stderr

    persistent = load_settings(
        tmp_path, show, DATABASE_CONN_MAX_AGE="60", DATABASE_POOL_MAX_SIZE="0", **PRODUCTION
    )
    assert persistent.returncode == 0, persistent.stderr
    assert persistent.stdout.strip() == "None"


def test_it_reads_retention_from_the_environment_and_refuses_a_negative_one(tmp_path):
    result = load_settings(
        tmp_path,
        show="settings.RETAIN_PROCESSED_EVENTS_DAYS, settings.RETAIN_TRANSITIONS_DAYS",
        OMOI_RETAIN_PROCESSED_EVENTS_DAYS="14",
        OMOI_RETAIN_TRANSITIONS_DAYS="0",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["14", "0"]

    result = load_settings(tmp_path, OMOI_RETAIN_DEAD_EVENTS_DAYS="-1")
    assert result.returncode != 0
    assert "OMOI_RETAIN_DEAD_EVENTS_DAYS must be 0 (keep forever) or more days" in result.stderr
    result = load_settings(tmp_path, OMOI_RETENTION_BATCH_SIZE="0")
    assert result.returncode != 0
    assert "OMOI_RETENTION_BATCH_SIZE" in result.stderr


def test_it_logs_readable_lines_and_files_mail_in_the_embedded_mode(tmp_path):
    result = load_settings(tmp_path, show="settings.LOG_FORMAT, settings.EMAIL_BACKEND")
    assert result.returncode == 0, result.stderr
    # Mail goes to <data dir>/mail, not between the log lines of the terminal.
    assert result.stdout.split() == ["console", "django.core.mail.backends.filebased.EmailBackend"]

    result = load_settings(tmp_path, show="settings.EMAIL_FILE_PATH")
    assert result.stdout.strip() == str(tmp_path / "mail")


def test_it_logs_json_in_production(tmp_path):
    result = load_settings(tmp_path, show="settings.LOG_FORMAT", **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["json"]
