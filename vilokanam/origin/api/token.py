"""The operator bearer token: ``api.token``, else one generated into ``{data_dir}/api-token``."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from vilokanam.config import Settings

TOKEN_FILE = "api-token"
MIN_LENGTH = 16


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def load_or_create_token(settings: Settings) -> str:
    """The configured token; else the one kept in the token file, created (mode 0600) if absent."""
    if settings.api.token:
        return settings.api.token
    path = token_path(settings)
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text().strip()
        if len(existing) >= MIN_LENGTH:
            return existing
        path.unlink()  # empty or truncated (a crash while writing): make a new one
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process (the CLI, a second server) just made it
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token
