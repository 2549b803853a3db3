"""Log output: JSON lines with ``--log-format json``, readable text by default."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from vilokanam.logs import JsonFormatter, setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_fields_extras_and_traceback() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = logging.getLogger("vilokanam.test")
    log.info("stream %s live", "demo", extra={"channel": "demo", "segments": 3})
    log.debug("hidden at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed: %s", "π")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "stream demo live" and first["level"] == "INFO"
    assert first["logger"] == "vilokanam.test"
    assert first["channel"] == "demo" and first["segments"] == 3
    assert first["ts"].endswith("Z")
    assert datetime.fromisoformat(first["ts"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert "exc_info" not in first
    assert second["level"] == "ERROR" and second["msg"] == "failed: π"
    assert "ValueError: boom" in second["exc_info"]


def test_unserializable_extras_become_strings() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "m", None, None)
    record.path = io.StringIO  # not JSON
    assert "StringIO" in json.loads(JsonFormatter().format(record))["path"]


def test_text_is_the_default() -> None:
    out = io.StringIO()
    setup_logging("warning", stream=out)
    logging.getLogger("vilokanam.test").warning("careful")
    line = out.getvalue().strip()
    assert line.endswith("WARNING vilokanam.test: careful")
    with pytest.raises(ValueError):
        setup_logging("info", "xml")  # type: ignore[arg-type]
