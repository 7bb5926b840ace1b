import json
import logging

import structlog

from observability.logging import REDACTED, structured_formatter


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
