"""A real Substrate runtime for tests: chopsticks running Rococo Asset Hub from its genesis.

Fixtures: ``chopsticks_home`` (session: the npm install in ``.cache/chopsticks`` and the chain
spec) and ``chopsticks`` (module: a running chain with the escrow //Alice and the viewer
accounts in ``FUNDED`` funded; ``stop()``/``start()`` give a fresh genesis). Without node/npm
the tests skip, or fail in CI (``VILOKANAM_REQUIRE_ALL=1``).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.outside import unavailable

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".cache" / "chopsticks"
CHOPSTICKS = "@acala-network/chopsticks@1.5.1"
KNOWN_CHAINS = "@substrate/connect-known-chains@1.10.3"
ENTRY = Path("node_modules/@acala-network/chopsticks/chopsticks.cjs")
SPEC = "rococo_v2_2_asset_hub"
ESCROW_URI = "//Alice"
FUNDED = ("//Alice", "//Bob", "//Charlie")
"""Development accounts funded at genesis: //Alice is the escrow, the others are viewers."""
FUNDS = 10**18
_LISTENING = re.compile(r"RPC listening on .*ws://127\.0\.0\.1:(\d+)")


def install(home: Path = HOME) -> Path:
    """Install chopsticks into ``home`` with npm if missing and write ``genesis.json``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node/npm not installed (needed to run the chopsticks chain); `.ci/run` does")
    assert node is not None and npm is not None
    home.mkdir(parents=True, exist_ok=True)
    if not (home / ENTRY).exists():
        result = subprocess.run(
            [npm, "install", "--no-save", "--ignore-scripts", "--no-audit", "--no-fund",
             CHOPSTICKS, KNOWN_CHAINS],
            cwd=home, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if result.returncode or not (home / ENTRY).exists():
            unavailable(f"npm install of chopsticks failed: {result.stderr[-2000:]}")
    genesis = home / "genesis.json"
    if not genesis.exists() or genesis.stat().st_size == 0:
        script = (
            f"process.stdout.write(require('@substrate/connect-known-chains/{SPEC}').chainSpec)"
        )
        with genesis.open("w") as out:
            subprocess.run([node, "-e", script], cwd=home, stdout=out, check=True, timeout=60)
    return home


class Chopsticks:
    """One chopsticks process; ``start()`` after ``stop()`` is a fresh chain (new genesis state)."""

    def __init__(self, home: Path, funded: tuple[str, ...] = FUNDED) -> None:
        self.home = home
        self.funded = funded
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.output: list[str] = []
        self._dir = Path(tempfile.mkdtemp(prefix="vilokanam-chain-"))

    def _config(self) -> Path:
        from substrateinterface import Keypair

        accounts = [
            [
                [Keypair.create_from_uri(uri).ss58_address],
                {"providers": 1, "data": {"free": str(FUNDS)}},
            ]
            for uri in self.funded
        ]
        config = {
            "genesis": str(self.home / "genesis.json"),
            "host": "127.0.0.1",
            "port": 0,
            "build-block-mode": "Instant",
            "runtime-log-level": 0,
            "import-storage": {"System": {"Account": accounts}},
        }
        path = self._dir / "chopsticks.json"  # JSON is YAML
        path.write_text(json.dumps(config))
        return path

    def start(self, timeout: float = 60) -> str:
        """Start a fresh chain; returns its ws:// URL."""
        node = shutil.which("node")
        assert node is not None
        self.output = []
        self.process = subprocess.Popen(
            [node, str(self.home / ENTRY), "-c", str(self._config())],
            cwd=self._dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        found = threading.Event()
        threading.Thread(target=self._read, args=(self.process, found), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("chopsticks did not start:\n" + "".join(self.output[-40:]))
        return self.url

    def _read(self, process: subprocess.Popen[str], found: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)
            if not found.is_set() and (match := _LISTENING.search(line)):
                self.url = f"ws://127.0.0.1:{match.group(1)}"
                found.set()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (chopsticks exits with -15), SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def ensure_running(self) -> str:
        return self.url if self.running else self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def chopsticks_home() -> Path:
    """The chopsticks install (npm, once) with the Rococo Asset Hub chain spec."""
    return install()


@pytest.fixture(scope="module")
def chopsticks(chopsticks_home: Path) -> Iterator[Chopsticks]:
    """A running chain for the module; a test that stops it leaves the next one a fresh chain."""
    chain = Chopsticks(chopsticks_home)
    chain.start()
    try:
        yield chain
    finally:
        chain.close()
