"""Worker → main process events: one JSON object per line on stdout, flushed, thread-safe."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO


class EventWriter:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def emit(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def warn_once(self, key: str, message: str) -> None:
        """A ``warning`` event, at most once per ``key``."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self.emit("warning", message=message)
