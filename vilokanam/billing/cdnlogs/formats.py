"""CDN access log lines → :class:`LogFetch`: nginx combined, nginx JSON, CloudFront standard logs.

Parsers are per file (CloudFront's ``#Fields:`` header sets the column order of the lines after
it) and never fatal: a line they cannot read raises :class:`BadLine`, which the reader counts
and skips. Headers and comments parse to None.

The nginx JSON field names are those of the ``log_format vilokanam_json`` in docs/cdn.md (each
named after its nginx variable), with a few common aliases.
"""

from __future__ import annotations

import calendar
import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote

FORMATS = ("nginx", "nginx-json", "cloudfront")
"""``--format`` values besides ``auto``."""

MAX_METHOD = 16
MAX_PATH = 4096
MAX_QUERY = 8192
MAX_CLIENT = 256
MAX_USER_AGENT = 2048
MAX_REQUEST_ID = 256
"""Longest fields a line may have (the API's ``CdnFetchIn`` takes no longer): a longer method,
path or query makes the line bad; a longer client, User-Agent or request id is cut."""
MAX_INT = 2**63 - 1
MIN_TIME = 946_684_800.0
"""2000-01-01: a line dated before is garbled (the reader also skips lines a month old)."""
MAX_TIME = 4_102_444_800.0
"""2100-01-01."""


@dataclass(frozen=True, slots=True)
class LogFetch:
    """One request as a CDN logged it."""

    at: float
    """Unix seconds (UTC) of the request."""
    method: str
    path: str
    """URL path, percent-decoded."""
    query: str
    """Raw query string without ``?`` ("" for none)."""
    status: int
    bytes: int
    client: str
    user_agent: str
    request_id: str = ""


class BadLine(ValueError):
    """A line that is not in the file's format (counted and skipped)."""


_P = TypeVar("_P")


def checked_time(at: float) -> float:
    """``at`` if it is a finite time between :data:`MIN_TIME` and :data:`MAX_TIME`."""
    if not (math.isfinite(at) and MIN_TIME <= at < MAX_TIME):
        raise BadLine(f"implausible time {at!r}")
    return at


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def _clean(text: str) -> str:
    """Lone surrogates (JSON ``\\ud800`` escapes) replaced: every field encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def bounded(fetch: LogFetch) -> LogFetch:
    """``fetch`` within the API's field limits (see :data:`MAX_PATH`); BadLine if it cannot be."""
    checked_time(fetch.at)
    if len(fetch.method) > MAX_METHOD or len(fetch.path) > MAX_PATH:
        raise BadLine("over-long method or path")
    if len(fetch.query) > MAX_QUERY:
        raise BadLine("over-long query")
    if not (0 <= fetch.status <= 999 and 0 <= fetch.bytes <= MAX_INT):
        raise BadLine("status or bytes out of range")
    if (
        len(fetch.client) > MAX_CLIENT
        or len(fetch.user_agent) > MAX_USER_AGENT
        or len(fetch.request_id) > MAX_REQUEST_ID
    ):
        fetch = LogFetch(
            fetch.at, fetch.method, fetch.path, fetch.query, fetch.status, fetch.bytes,
            _cut(fetch.client, MAX_CLIENT), _cut(fetch.user_agent, MAX_USER_AGENT),
            _cut(fetch.request_id, MAX_REQUEST_ID),
        )  # fmt: skip
    return fetch


def _never_fatal(
    parse: Callable[[_P, str], LogFetch | None],
) -> Callable[[_P, str], LogFetch | None]:
    """A parser method whose every failure on a garbled line (a number too large, NaN, too
    deep a JSON nesting) is a :class:`BadLine`, and whose fetches are :func:`bounded`."""

    @functools.wraps(parse)
    def wrapper(self: _P, line: str) -> LogFetch | None:
        try:
            fetch = parse(self, line)
        except BadLine:
            raise
        except (ValueError, OverflowError, TypeError, RecursionError) as exc:
            raise BadLine(f"garbled line ({type(exc).__name__})") from None
        return None if fetch is None else bounded(fetch)

    return wrapper


class LineParser(Protocol):
    def parse(self, line: str) -> LogFetch | None:
        """The request of ``line``; None for a header, comment or blank; BadLine otherwise."""
        ...


def split_uri(uri: str) -> tuple[str, str]:
    """``/a%20b?x=1`` → (``/a b``, ``x=1``)."""
    path, _, query = uri.partition("?")
    return unquote(path), query


# -- nginx combined -----------------------------------------------------------------------------
COMBINED = re.compile(
    r"(?P<client>\S++) \S++ [^\[]*+(?<= )\[(?P<time>[^\]]{1,64}+)\] "
    r'"(?P<request>(?:[^"\\]++|\\.)*+)" (?P<status>[0-9]{3}) (?P<bytes>[0-9]{1,19}+|-)'
    r'(?: "(?P<referer>(?:[^"\\]++|\\.)*+)" "(?P<agent>(?:[^"\\]++|\\.)*+)")?'
)
"""``$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
"$http_referer" "$http_user_agent"``; anything after it (custom additions) is ignored.
Possessive quantifiers only: matching is linear in the line's length, whatever it holds."""
_MONTHS = {name: index for index, name in enumerate(calendar.month_abbr) if name}
_ESCAPED = re.compile(rb"\\x([0-9A-Fa-f]{2})")


def parse_time_local(text: str) -> float:
    """nginx ``$time_local`` (``10/Oct/2000:13:55:36 -0700``) → unix seconds; locale-free."""
    try:
        day, month, year = int(text[0:2]), _MONTHS[text[3:6]], int(text[7:11])
        hour, minute, second = int(text[12:14]), int(text[15:17]), int(text[18:20])
        sign = -1 if text[21] == "-" else 1
        offset = sign * (int(text[22:24]) * 3600 + int(text[24:26]) * 60)
        if len(text) != 26 or text[2] != "/" or text[6] != "/" or text[20] != " ":
            raise ValueError(text)
        datetime(year, month, day, hour, minute, second)  # range checks
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    except (KeyError, IndexError, ValueError):
        raise BadLine(f"bad time {text!r}") from None


def _unescape(text: str) -> str:
    r"""nginx's default log escaping (``\xHH`` for quotes, backslashes, control and 8-bit bytes)
    undone; the bytes read as UTF-8."""
    if "\\x" not in text:
        return text
    raw = _ESCAPED.sub(lambda m: bytes([int(m[1], 16)]), text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def _value(text: str | None) -> str:
    """nginx logs an empty variable as ``-``."""
    return "" if not text or text == "-" else text


def _request_line(request: str) -> tuple[str, str, str]:
    """``GET /uri HTTP/1.1`` → (method, path, query); a malformed request has no path."""
    parts = request.split(" ")
    if len(parts) not in (2, 3) or not parts[0].isalpha() or not parts[1].startswith("/"):
        return (parts[0] if parts and parts[0].isalpha() else "-"), "", ""
    path, query = split_uri(parts[1])
    return parts[0], path, query


class CombinedParser:
    """nginx's predefined ``combined`` format (Apache's too)."""

    def __init__(self) -> None:
        self._last_time: tuple[str, float] = ("", 0.0)

    @_never_fatal
    def parse(self, line: str) -> LogFetch | None:
        if not line.strip():
            return None
        match = COMBINED.match(line)
        if match is None:
            raise BadLine("not an nginx combined line")
        stamp = match["time"]
        if stamp != self._last_time[0]:  # lines of one second share the stamp
            self._last_time = (stamp, parse_time_local(stamp))
        method, path, query = _request_line(_unescape(match["request"]))
        size = match["bytes"]
        return LogFetch(
            at=self._last_time[1],
            method=method,
            path=path,
            query=query,
            status=int(match["status"]),
            bytes=0 if size == "-" else int(size),
            client=match["client"],
            user_agent=_unescape(_value(match["agent"])),
        )


# -- nginx JSON --------------------------------------------------------------------------------
def _first(record: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = record.get(name)
        if value not in (None, "", "-"):
            return value
    return None


def _number(value: Any, what: str) -> float:
    """A finite number (JSON number or numeric string); BadLine for NaN, infinities, others."""
    if isinstance(value, bool):
        raise BadLine(f"bad {what} {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise BadLine(f"bad {what} {value!r}") from None
    if not math.isfinite(number):
        raise BadLine(f"bad {what} {value!r}")
    return number


def _integer(value: Any, what: str, limit: int) -> int:
    """A whole number 0..``limit`` (a JSON integer, float or numeric string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        decimal = _number(value, what)
        if not decimal.is_integer():
            raise BadLine(f"bad {what} {value!r}")
        number = int(decimal)
    if not 0 <= number <= limit:
        raise BadLine(f"bad {what} {value!r}")
    return number


def parse_iso(text: str) -> float:
    """``2026-11-24T23:11:02+00:00`` (``$time_iso8601``, or with a ``Z``) → unix seconds."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise BadLine(f"bad time {text!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


_BYTES = ("body_bytes_sent", "bytes_sent", "bytes")


class JsonParser:
    """One JSON object per line (``log_format … escape=json``)."""

    @_never_fatal
    def parse(self, line: str) -> LogFetch | None:
        if not line.strip():
            return None
        try:
            record = json.loads(line)
        except ValueError:
            raise BadLine("not JSON") from None
        if not isinstance(record, dict):
            raise BadLine("not a JSON object")
        request = {name: _clean(value) for name, value in self._request(record).items()}
        return LogFetch(
            at=checked_time(self._time(record)),
            status=_integer(_first(record, "status"), "status", 999),
            bytes=_integer(_first(record, *_BYTES) or 0, "bytes", MAX_INT),
            client=_clean(str(_first(record, "remote_addr", "client", "client_ip") or "")),
            user_agent=_clean(str(_first(record, "http_user_agent", "user_agent") or "")),
            request_id=_clean(str(_first(record, "request_id") or "")),
            **request,
        )

    @staticmethod
    def _time(record: dict[str, Any]) -> float:
        msec = _first(record, "msec")
        if msec is not None:
            return _number(msec, "msec")
        iso = _first(record, "time_iso8601", "time", "timestamp")
        if isinstance(iso, str):
            return parse_iso(iso)
        local = _first(record, "time_local")
        if isinstance(local, str):
            return parse_time_local(local)
        raise BadLine("no time (msec, time_iso8601 or time_local)")

    @staticmethod
    def _request(record: dict[str, Any]) -> dict[str, str]:
        method = _first(record, "request_method", "method")
        uri = _first(record, "request_uri")
        if uri is None and _first(record, "uri") is not None:
            args = _first(record, "args", "query_string")
            uri = str(record["uri"]) + (f"?{args}" if args else "")
        if uri is None:
            request = _first(record, "request")
            if request is None:
                raise BadLine("no request (request_uri, uri or request)")
            found, path, query = _request_line(str(request))
            return {"method": str(method or found), "path": path, "query": query}
        path, query = split_uri(str(uri))
        return {"method": str(method or "GET"), "path": path, "query": query}


# -- CloudFront standard logs --------------------------------------------------------------------
CLOUDFRONT_FIELDS = (
    "date", "time", "x-edge-location", "sc-bytes", "c-ip", "cs-method", "cs(Host)",
    "cs-uri-stem", "sc-status", "cs(Referer)", "cs(User-Agent)", "cs-uri-query", "cs(Cookie)",
    "x-edge-result-type", "x-edge-request-id", "x-host-header", "cs-protocol", "cs-bytes",
    "time-taken", "x-forwarded-for", "ssl-protocol", "ssl-cipher", "x-edge-response-result-type",
    "cs-protocol-version", "fle-status", "fle-encrypted-fields", "c-port", "time-to-first-byte",
    "x-edge-detailed-result-type", "sc-content-type", "sc-content-len", "sc-range-start",
    "sc-range-end",
)  # fmt: skip
"""The standard log's columns (version 1.0), used until a ``#Fields:`` line says otherwise."""


_STATUS = re.compile(r"[0-9]{3}")
_SIZE = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "²" too


class CloudFrontParser:
    """Tab-separated W3C lines; ``-`` is an empty value; the user agent is URL-encoded."""

    def __init__(self) -> None:
        self._columns = {name: index for index, name in enumerate(CLOUDFRONT_FIELDS)}

    @_never_fatal
    def parse(self, line: str) -> LogFetch | None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return None
        if line.startswith("#"):
            if line.startswith("#Fields:"):
                names = line[len("#Fields:") :].split()
                self._columns = {name: index for index, name in enumerate(names)}
            return None
        values = line.split("\t")

        def get(name: str) -> str:
            index = self._columns.get(name)
            value = values[index] if index is not None and index < len(values) else "-"
            return "" if value == "-" else value

        date, time_, stem, status = get("date"), get("time"), get("cs-uri-stem"), get("sc-status")
        if not (date and time_ and stem and _STATUS.fullmatch(status)):
            raise BadLine("not a CloudFront log line")
        size = get("sc-bytes")
        return LogFetch(
            at=_cloudfront_time(date, time_),
            method=get("cs-method") or "GET",
            path=unquote(stem),
            query=get("cs-uri-query"),
            status=int(status),
            bytes=int(size) if _SIZE.fullmatch(size) else 0,
            client=get("c-ip"),
            user_agent=unquote(get("cs(User-Agent)")),
            request_id=get("x-edge-request-id"),
        )


def _cloudfront_time(date: str, clock: str) -> float:
    """``2026-11-24`` + ``23:11:02`` (UTC) → unix seconds."""
    try:
        if len(date) != 10 or len(clock) != 8 or date[4] != "-" or clock[2] != ":":
            raise ValueError(date)
        year, month, day = int(date[0:4]), int(date[5:7]), int(date[8:10])
        hour, minute, second = int(clock[0:2]), int(clock[3:5]), int(clock[6:8])
        datetime(year, month, day, hour, minute, second)  # range checks
    except ValueError:
        raise BadLine(f"bad time {date} {clock}") from None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


# -- choosing a parser ---------------------------------------------------------------------------
def detect(first_line: str) -> str | None:
    """The format of a file from its first non-empty line; None if none fits."""
    line = first_line.strip()
    if line.startswith(("#Version", "#Fields")):
        return "cloudfront"
    if line.startswith("{"):
        return "nginx-json"
    if COMBINED.match(line):
        return "nginx"
    if "\t" in line:
        try:
            if CloudFrontParser().parse(line) is not None:
                return "cloudfront"
        except BadLine:
            pass
    return None


def parser_for(name: str) -> LineParser:
    if name == "nginx":
        return CombinedParser()
    if name == "nginx-json":
        return JsonParser()
    if name == "cloudfront":
        return CloudFrontParser()
    raise ValueError(f"unknown log format {name!r}: use auto, {', '.join(FORMATS)}")
