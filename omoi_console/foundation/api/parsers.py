import json
import zlib

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import BaseParser, JSONParser

from omoi_console.foundation.api.exceptions import RequestTooLarge
from omoi_console.foundation.labels import unstorable

UTF_8 = {"utf-8", "utf8"}


class BoundedJSONParser(JSONParser):
    """Strict JSON: UTF-8 only, at most MAX_REQUEST_BYTES, and only what we can store.

    Refused with 400: NaN/Infinity, duplicate keys (which one did the client
    mean?), lone surrogates and NUL characters (no database column or renderer
    takes them, even as dictionary keys), and nesting deep enough to exhaust
    the parser's recursion.
    Refused with 415: another charset or a compressed body.

    Django already refuses an oversized ``request.body`` (mapped to 413 by the
    problem handler); the bound here covers any stream DRF hands over unread.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_REQUEST_BYTES
        request = (parser_context or {}).get("request")
        meta = request.META if request is not None else {}
        refuse_unsupported_encoding(meta, media_type or "")
        declared = meta.get("CONTENT_LENGTH")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
        try:
            return load_strict_json(body)
        except ValueError as exc:
            raise ParseError(f"Malformed JSON: {exc}") from None


def load_strict_json(body: bytes, *, constants: bool = False):
    """Parse a UTF-8 JSON body under the rules above; ValueError says what is wrong.

    Shared by the DRF parser and the lean ingest path, so both refuse the same bodies.
    With ``constants``, NaN and Infinity (which many JSON encoders write) parse as
    floats, for batches that refuse them sample by sample with a reason.
    """
    try:
        data = json.loads(
            body.decode("utf-8"),
            parse_constant=float if constants else _refuse_constant,
            object_pairs_hook=_refuse_duplicate_keys,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    problem = unstorable_text(data)
    if problem:
        raise ValueError(f"strings may not contain {problem}.")
    return data


def unstorable_text(data) -> str | None:
    """Name what no column or renderer takes (NUL, a lone surrogate), in keys or values."""
    pending = [data]
    while pending:  # iterative: the parser has already allowed the nesting depth
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
            texts = item.keys()
        elif isinstance(item, list):
            pending.extend(item)
            continue
        elif isinstance(item, str):
            texts = (item,)
        else:
            continue
        for text in texts:
            problem = unstorable(text)
            if problem:
                return problem
    return None


def refuse_unsupported_encoding(meta: dict, media_type: str) -> None:
    encoding = meta.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(media_type, f"Content-Encoding {encoding!r} is not supported.")
    for parameter in media_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in UTF_8:
            raise UnsupportedMediaType(media_type, "JSON bodies must be UTF-8.")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"duplicate key {duplicate!r}")
    return result


class BatchJSONParser(JSONParser):
    """JSON batches: up to ``REQUEST_BODY_LIMITS`` for the path, optionally gzip-compressed.

    The compressed body is bounded by the path's limit and the expanded one by
    ``METRIC_MAX_DECOMPRESSED_BYTES`` (a small body may not expand without
    bound); both answer 413. Texts are not checked here for what no column
    takes (NUL): the batch's consumer checks every text it stores.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        refuse_unsupported_encoding({}, media_type or "")
        body = read_batch_body(stream, media_type, parser_context)
        try:
            # Batches are large: a C parser first. It refuses what JSON does not
            # allow; the strict parser then says what was wrong, and parses the
            # NaN and Infinity that many encoders write, for the batch's own
            # sample-by-sample refusal. Where a key repeats within an object, the
            # last one counts.
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        try:
            return load_strict_json(body, constants=True)
        except ValueError as exc:
            raise ParseError(f"Malformed JSON: {exc}") from None


class BatchBytesParser(BaseParser):
    """A batch body as bytes, bounded and expanded like ``BatchJSONParser``'s, for views
    that decode it themselves (subclasses name the media type)."""

    def parse(self, stream, media_type=None, parser_context=None):
        return read_batch_body(stream, media_type, parser_context)


def read_batch_body(stream, media_type, parser_context) -> bytes:
    """The body of a batch path: at most its ``REQUEST_BODY_LIMITS``, gunzipped when so sent."""
    request = (parser_context or {}).get("request")
    meta = request.META if request is not None else {}
    path = request.path if request is not None else ""
    limit = settings.REQUEST_BODY_LIMITS.get(path, settings.MAX_REQUEST_BYTES)
    encoding = meta.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise UnsupportedMediaType(media_type, f"Content-Encoding {encoding!r} is not supported.")
    body = stream.read(limit + 1) if stream is not None else b""
    if len(body) > limit:
        raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
    if encoding == "gzip":
        body = gunzip_bounded(body, settings.METRIC_MAX_DECOMPRESSED_BYTES)
    return body


def gunzip_bounded(body: bytes, limit: int) -> bytes:
    """Expand a gzip body to at most ``limit`` bytes; 413 beyond, 400 when it is not gzip."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        expanded = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ParseError("Content-Encoding is gzip but the body is not valid gzip.") from None
    if len(expanded) > limit or inflater.unconsumed_tail:
        raise RequestTooLarge(f"The body expands to more than {limit} bytes.")
    if not inflater.eof:
        raise ParseError("The gzip body is truncated.")
    return expanded
