import json
import logging

import structlog

from observability.logging import REDACTED, structured_formatter
from omoi_console.celery import app as celery_app


def test_it_never_writes_secrets_to_the_log():
    stream = logging.StreamHandler(stream=_Buffer())
    stream.setFormatter(structured_formatter("json"))
    logger = logging.getLogger("test.secrets")
    logger.addHandler(stream)
    logger.setLevel(logging.INFO)
    try:
        structlog.get_logger("test.secrets").info(
            "token.issued", token="omoi_ag_0123456789ab_s3cret", smtp_password="hunter2", agent="a"
        )
    finally:
        logger.removeHandler(stream)

    line = json.loads(stream.stream.lines[-1])
    assert line["token"] == REDACTED and line["smtp_password"] == REDACTED
    assert line["agent"] == "a"
    assert "s3cret" not in stream.stream.lines[-1] and "hunter2" not in stream.stream.lines[-1]


class _Buffer:
    def __init__(self):
        self.lines = []

    def write(self, text):
        if text.strip():
            self.lines.append(text.strip())

    def flush(self):
        pass


def test_celery_workers_keep_the_structured_log(monkeypatch):
    root = logging.getLogger()
    before = [(handler, handler.formatter) for handler in root.handlers]
    monkeypatch.setattr(celery_app.log, "already_setup", False)

    # What a worker or beat does with its logging when it starts.
    handled = celery_app.log.setup_logging_subsystem(loglevel="INFO")

    assert handled
    assert [(handler, handler.formatter) for handler in root.handlers] == before
    assert isinstance(before[0][1], structlog.stdlib.ProcessorFormatter)
