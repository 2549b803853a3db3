"""CDN access log lines → :class:`LogFetch`: nginx combined, nginx JSON, CloudFront standard logs.

Parsers are per file (CloudFront's ``#Fields:`` header sets the column order of the lines after
it) and never fatal: a line they cannot read raises :class:`BadLine`, which the reader counts
and skips. Headers and comments parse to None.

The nginx JSON field names are those of the ``log_format vilokanam_json`` in docs/cdn.md (each
named after its nginx variable), with a few common aliases.
"""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

FORMATS = ("nginx", "nginx-json", "cloudfront")
"""``--format`` values besides ``auto``."""


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
    r'(?P<client>\S+) \S+ .*? \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r"(?P<status>\d{3}) (?P<bytes>\d+|-)"
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
)
"""``$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
"$http_referer" "$http_user_agent"``; anything after it (custom additions) is ignored."""
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
    if isinstance(value, bool):
        raise BadLine(f"bad {what} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadLine(f"bad {what} {value!r}") from None


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

    def parse(self, line: str) -> LogFetch | None:
        if not line.strip():
            return None
        try:
            record = json.loads(line)
        except ValueError:
            raise BadLine("not JSON") from None
        if not isinstance(record, dict):
            raise BadLine("not a JSON object")
        return LogFetch(
            at=self._time(record),
            status=int(_number(_first(record, "status"), "status")),
            bytes=int(_number(_first(record, *_BYTES) or 0, "bytes")),
            client=str(_first(record, "remote_addr", "client", "client_ip") or ""),
            user_agent=str(_first(record, "http_user_agent", "user_agent") or ""),
            request_id=str(_first(record, "request_id") or ""),
            **self._request(record),
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


class CloudFrontParser:
    """Tab-separated W3C lines; ``-`` is an empty value; the user agent is URL-encoded."""

    def __init__(self) -> None:
        self._columns = {name: index for index, name in enumerate(CLOUDFRONT_FIELDS)}

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
        if not (date and time_ and stem and status.isdigit()):
            raise BadLine("not a CloudFront log line")
        size = get("sc-bytes")
        return LogFetch(
            at=_cloudfront_time(date, time_),
            method=get("cs-method") or "GET",
            path=unquote(stem),
            query=get("cs-uri-query"),
            status=int(status),
            bytes=int(size) if size.isdigit() else 0,
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
