"""Rules for channel fields; each failure is an ``InvalidField`` that names the field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from vilokanam.config import Rung
from vilokanam.store.errors import InvalidField
from vilokanam.store.keys import SLUG_RULE, valid_slug

MAX_TITLE = 200
MAX_CATEGORY = 64
MAX_TAGS = 20
MAX_TAG = 32
MAX_PRICE = 2**63 - 1  # a signed 64-bit column
MAX_RETENTION_DAYS = 36500


def slug(value: Any) -> str:
    if not isinstance(value, str) or not valid_slug(value):
        raise InvalidField("slug", f"invalid slug {value!r}: {SLUG_RULE}")
    return value


def text(field: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidField(field, f"invalid {field}: must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > limit:
        raise InvalidField(field, f"invalid {field}: at most {limit} characters ({len(value)})")
    return value


def price(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_PRICE:
        raise InvalidField(
            "price_per_second",
            f"invalid price_per_second: an integer number of planck >= 0, got {value!r}",
        )
    return value


def tags(value: Any) -> list[str]:
    """Stripped, duplicates dropped (first one kept), order kept."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidField("tags", f"invalid tags: a list of strings, got {value!r}")
    cleaned: list[str] = []
    for tag in value:
        if not isinstance(tag, str) or not tag.strip() or len(tag.strip()) > MAX_TAG:
            raise InvalidField(
                "tags", f"invalid tags: each tag is 1-{MAX_TAG} characters of text, got {tag!r}"
            )
        if tag.strip() not in cleaned:
            cleaned.append(tag.strip())
    if len(cleaned) > MAX_TAGS:
        raise InvalidField("tags", f"invalid tags: at most {MAX_TAGS} tags ({len(cleaned)})")
    return cleaned


def ladder(value: Any) -> list[dict[str, Any]] | None:
    """None (the server's ladder) or rungs as ``transcode.ladder`` takes them, normalized."""
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise InvalidField("ladder", f"invalid ladder: a list of rungs, got {value!r}")
    rungs: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        try:
            rung = item if isinstance(item, Rung) else Rung.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'rung'}: {error['msg']}"
                for error in exc.errors()
            )
            raise InvalidField("ladder", f"invalid ladder: rung {index}: {problems}") from None
        rungs.append(rung.model_dump())
    names = [rung["name"] for rung in rungs]
    if len(set(names)) != len(names) or "source" in names:
        raise InvalidField("ladder", "invalid ladder: rung names must be unique and not 'source'")
    return rungs


def record(value: Any) -> bool | None:
    """A channel's recording override: True, False, or None (the server's ``recording.enabled``)."""
    if value is not None and type(value) is not bool:
        raise InvalidField("record", f"invalid record: true, false or null, got {value!r}")
    return value


def retention_days(value: Any) -> int | None:
    """Days a channel's VODs are kept (0: kept), or None (the server's retention)."""
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_RETENTION_DAYS):
        raise InvalidField(
            "vod_retention_days",
            f"invalid vod_retention_days: an integer from 0 to {MAX_RETENTION_DAYS} "
            f"(0 keeps VODs) or null, got {value!r}",
        )
    return value
