"""What the client raises. No error carries the token or any request header."""

from dataclasses import dataclass


class OmoiError(Exception):
    """Anything the client could not do."""


class ConnectionFailed(OmoiError):
    """The console could not be reached (refused, reset, timed out), every attempt."""


class UnexpectedResponse(OmoiError):
    """The console answered with a body this client does not understand."""


@dataclass(frozen=True)
class FieldProblem:
    """One thing the console found wrong: ``index`` is the sample's place in its batch."""

    index: int | None
    field: str | None
    detail: str


class ApiError(OmoiError):
    """The console answered with an error status (problem details, RFC 9457)."""

    def __init__(self, status: int, detail: str, *, problems=(), retry_after: float | None = None):
        self.status = status
        self.detail = detail
        self.problems: tuple[FieldProblem, ...] = tuple(problems)
        self.retry_after = retry_after
        super().__init__(f"{status}: {detail}")


class Unavailable(ApiError):
    """429 or 503 on every attempt: the console asked us to come back later."""


class RequestRejected(ApiError):
    """422: the request was understood and refused; ``problems`` says why, field by field."""


class BatchRejected(RequestRejected):
    """A batch of samples was refused and nothing of it was stored.

    The client drops such a batch from its buffer (sending it again cannot
    succeed); ``problems`` names each bad sample by its index in the batch and
    ``samples`` holds the batch, for the caller to inspect or mend.
    """

    def __init__(self, status: int, detail: str, *, problems=(), samples=()):
        super().__init__(status, detail, problems=problems)
        self.samples: tuple[dict, ...] = tuple(samples)
