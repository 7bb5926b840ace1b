"""On-demand profiles with pyinstrument, stored as ``ProfileSnapshot`` rows.

``profiled`` wraps any block (a request, a task, a hot path); the middleware
profiles one request for a staff user holding ``observability.profile_requests``
who asks for it with an ``X-Omoi-Profile: 1`` header or ``?omoi_profile=1``.
Anyone else's request, header or not, runs unprofiled.
"""

import contextlib
from dataclasses import dataclass

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from opentelemetry import trace
from pyinstrument import Profiler

from observability.models import ProfileKind, ProfileSnapshot

log = structlog.get_logger(__name__)

PROFILE_HEADER = "HTTP_X_OMOI_PROFILE"
PROFILE_PARAMETER = "omoi_profile"
PERMISSION = "observability.profile_requests"
# The text tree of a long run can be large; the page has every frame anyway.
SUMMARY_MAX_CHARS = 100_000


class Capture:
    """A pyinstrument run of a block; ``save`` stores it (kept apart for async callers).

    If a profiler already runs in this thread (a profiled task inside a profiled
    request), the block runs unprofiled and ``save`` stores nothing.
    """

    def __init__(self, async_mode: str = "disabled"):
        self.profiler = Profiler(interval=settings.PROFILE_INTERVAL_SECONDS, async_mode=async_mode)
        self.running = False
        self.trace_id = ""

    def __enter__(self):
        try:
            self.profiler.start()
        except RuntimeError:
            log.warning("profile.already_running")
        else:
            self.running = True
        return self

    def __exit__(self, *exc):
        if self.running:
            self.profiler.stop()
            context = trace.get_current_span().get_span_context()
            self.trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        return False

    def save(self, kind: str, target: str, *, requested_by: str = "") -> ProfileSnapshot | None:
        session = self.profiler.last_session
        if not self.running or session is None:
            return None
        snapshot = ProfileSnapshot.objects.create(
            kind=kind,
            target=target[:300],
            duration_seconds=session.duration,
            requested_by=requested_by[:150],
            trace_id=self.trace_id,
            summary=self.profiler.output_text(unicode=True, color=False)[:SUMMARY_MAX_CHARS],
            html=self.profiler.output_html(),
        )
        log.info(
            "profile.saved",
            profile_id=snapshot.pk,
            kind=kind,
            target=target[:300],
            seconds=round(session.duration, 4),
        )
        return snapshot


@dataclass
class Profiled:
    """What ``profiled`` hands back: the snapshot once the block has finished."""

    snapshot: ProfileSnapshot | None = None


@contextlib.contextmanager
def profiled(kind: str, target: str, *, requested_by: str = ""):
    """Profile the block and store it; ``.snapshot`` is set when the block ends.

    A block that raises is stored too, then its exception goes on (not one
    from storing the profile, which is only logged then).
    """
    result = Profiled()
    capture = Capture()
    raised = True
    try:
        with capture:
            yield result
        raised = False
    finally:
        try:
            result.snapshot = capture.save(kind, target, requested_by=requested_by)
        except Exception:
            if not raised:
                raise
            log.exception("profile.save_failed", target=target[:300])


def wants_profile(request) -> bool:
    """True when the request asks for a profile and its user may have one."""
    asked = request.META.get(PROFILE_HEADER) == "1" or (
        PROFILE_PARAMETER in request.META.get("QUERY_STRING", "")
        and request.GET.get(PROFILE_PARAMETER) == "1"
    )
    if not asked:
        return False
    user = getattr(request, "user", None)
    return bool(user and user.is_authenticated and user.is_staff and user.has_perm(PERMISSION))


def _target(request) -> str:
    return f"{request.method} {request.path}"


def _mark(response, result: Profiled):
    if result.snapshot is not None:
        response["X-Omoi-Profile-Id"] = str(result.snapshot.pk)
    return response


class ProfileRequestMiddleware:
    """Profiles one request on demand (see the module docstring); after authentication.

    Sync and async: an async request is profiled with pyinstrument's async mode,
    so time spent awaiting shows where it was awaited.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        if not wants_profile(request):
            return self.get_response(request)
        with profiled(
            ProfileKind.REQUEST, _target(request), requested_by=request.user.get_username()
        ) as result:
            response = self.get_response(request)
        return _mark(response, result)

    async def __acall__(self, request):
        if not await sync_to_async(wants_profile)(request):
            return await self.get_response(request)
        with Capture(async_mode="enabled") as capture:
            response = await self.get_response(request)
        snapshot = await sync_to_async(capture.save)(
            ProfileKind.REQUEST, _target(request), requested_by=request.user.get_username()
        )
        return _mark(response, Profiled(snapshot))


def profile_task(task, *args, requested_by: str = "", **kwargs) -> ProfileSnapshot:
    """Run one Celery task here, now, under the profiler; return its snapshot.

    ``task.apply`` runs the task's own code in this process, as a worker
    would, with the worker's signals (and so its span).
    """
    with profiled(ProfileKind.TASK, task.name, requested_by=requested_by) as result:
        task.apply(args=args, kwargs=kwargs, throw=True)
    return result.snapshot
