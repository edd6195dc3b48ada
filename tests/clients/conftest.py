"""Fixtures for the client conformance suite: a real `streamhouse serve` process per test
module (each test makes its own topic, so tests stay independent), and its log tail in the
report of any failing test."""

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_PREFIX = "streamhouse ready kafka="
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30


def server_binary() -> Path:
    explicit = os.environ.get("STREAMHOUSE_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "streamhouse"


class Server:
    def __init__(self, data_dir: Path, extra_args=()):
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.log_path = data_dir.parent / "server.log"
        self.bootstrap = None
        self.advertised = None
        self.proc = None

    def start(self):
        binary = server_binary()
        if not binary.exists():
            pytest.fail(
                f"server binary {binary} not found: build it with "
                "`cargo build -p streamhouse-cli` or set STREAMHOUSE_BIN"
            )
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--kafka-addr",
                "127.0.0.1:0",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "NO_COLOR": "1"},
        )
        ready = threading.Event()

        def read_stdout():
            # Read the ready line, then keep draining stdout so the pipe never fills.
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not ready.is_set() and line.startswith(READY_PREFIX):
                    fields = dict(
                        f.split("=", 1) for f in line[len("streamhouse ready ") :].split()
                    )
                    self.bootstrap = fields["kafka"]
                    self.advertised = fields.get("advertised")
                    ready.set()

        self._reader = threading.Thread(target=read_stdout, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(
                    f"server did not print its ready line (exit {self.proc.returncode}); "
                    f"log tail:\n{self.log_tail()}"
                )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self._reader.join(5)
        self._log.close()
        return code

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """The module's server; a test module may set `SERVER_ARGS = [...]` for extra
    `streamhouse serve` flags."""
    root = tmp_path_factory.mktemp("streamhouse")
    srv = Server(root / "data", getattr(request.module, "SERVER_ARGS", ()))
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, (
        f"server exited with {code} after SIGTERM (expected 0); log tail:\n{srv.log_tail()}"
    )


@pytest.fixture
def topic_name(request):
    """A fresh topic name for this test (not created)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"{base}-{uuid.uuid4().hex[:12]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        srv = getattr(item, "funcargs", {}).get("server")
        if isinstance(srv, Server):
            report.sections.append(
                (f"streamhouse server log tail ({srv.log_path})", srv.log_tail())
            )
