"""Fixtures for the client conformance suite: a real `streamhouse serve` process per test
module (each test makes its own topic, so tests stay independent), and its log tail in the
report of any failing test. `cluster` starts several agents sharing one PostgreSQL schema and
one S3 bucket (an s3s-fs server) for the distributed tests."""

import os
import shutil
import signal
import socket
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
        self.http = None
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
                "--http-addr",
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
                    self.http = fields.get("http")
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

    def kill9(self):
        """SIGKILL: no flush, no lease release, no goodbye."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)
        self._log.close()

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


POSTGRES_URL = os.environ.get(
    "STREAMHOUSE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"
)
S3_ACCESS_KEY = "streamhouse-test"
S3_SECRET_KEY = "streamhouse-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql: str) -> str:
    if shutil.which("psql") is None:
        pytest.fail("psql is required for the distributed tests (PostgreSQL client)")
    out = subprocess.run(
        ["psql", POSTGRES_URL, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.fail(f"psql {sql!r} failed on {POSTGRES_URL}: {out.stderr.strip()}")
    return out.stdout


class S3Fs:
    """An `s3s-fs` S3 server on a directory, with one empty bucket."""

    def __init__(self, root: Path, bucket: str):
        self.root = root
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        binary = shutil.which("s3s-fs") or str(Path.home() / ".cargo/bin/s3s-fs")
        if not Path(binary).exists():
            pytest.fail(
                "s3s-fs is required for the distributed tests: "
                "cargo install s3s-fs --version 0.14.1 --features binary --locked"
            )
        (self.root / self.bucket).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY, str(self.root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"s3s-fs did not accept connections on port {self.port}")
                time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def serve_args(self, prefix: str):
        return [
            "--object-store-url", f"s3://{self.bucket}/{prefix}",
            "--s3-endpoint", self.endpoint,
            "--s3-region", "us-east-1",
            "--s3-access-key-id", S3_ACCESS_KEY,
            "--s3-secret-access-key", S3_SECRET_KEY,
            "--s3-allow-http",
        ]


class Cluster:
    """Agents sharing one PostgreSQL schema (their metadata) and one S3 bucket (their
    objects). `bootstrap` names all of them; `agents[i]` is a `Server`."""

    HEARTBEAT_MS = 1000
    LEASE_TTL_MS = 3000

    def __init__(self, root: Path, count: int, extra_args=()):
        self.root = root
        self.schema = f"sh_{uuid.uuid4().hex[:16]}"
        self.metadata_url = (
            f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}"
            f"options=-c%20search_path%3D{self.schema}&application_name={self.schema}"
        )
        self.s3 = S3Fs(root / "s3", "bucket")
        self.agents = []
        self.count = count
        self.extra_args = list(extra_args)
        self.bootstrap = None

    def start(self):
        psql(f"CREATE SCHEMA {self.schema}")
        self.s3.start()
        common = [
            "--metadata-url", self.metadata_url,
            *self.s3.serve_args("streamhouse"),
            "--heartbeat-interval-ms", str(self.HEARTBEAT_MS),
            "--lease-ttl-ms", str(self.LEASE_TTL_MS),
            *self.extra_args,
        ]
        for i in range(self.count):
            agent_dir = self.root / f"agent-{i + 1}"
            agent_dir.mkdir()
            agent = Server(agent_dir / "data", [*common, "--agent-id", f"agent-{i + 1}"])
            self.agents.append(agent)
            agent.start()
        self.bootstrap = ",".join(a.bootstrap for a in self.agents)

    def agent_at(self, host: str, port: int):
        """The agent advertised as host:port (as a Metadata broker names it)."""
        for a in self.agents:
            if (a.advertised or a.bootstrap) == f"{host}:{port}":
                return a
        raise KeyError(f"no agent at {host}:{port}")

    def stop(self):
        """Stops the running agents (SIGTERM), the S3 server, and drops the schema; returns
        the exit codes of the agents that were still running."""
        codes = {}
        for i, a in enumerate(self.agents):
            if a.proc is not None and a.proc.poll() is None:
                codes[f"agent-{i + 1}"] = a.stop()
        self.s3.stop()
        try:
            psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE application_name = '{self.schema}'"
            )
            psql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        except BaseException as e:  # pytest.fail raises Failed, a BaseException
            codes["drop schema"] = repr(e)
        return codes


@pytest.fixture
def cluster(tmp_path_factory, request):
    """Three agents on one PostgreSQL schema and one s3s-fs bucket, with a 1 s heartbeat and
    a 3 s lease TTL; a test module may set `CLUSTER_ARGS = [...]` for more serve flags."""
    c = Cluster(
        tmp_path_factory.mktemp("cluster"), 3, getattr(request.module, "CLUSTER_ARGS", ())
    )
    try:
        c.start()
        yield c
    finally:
        codes = c.stop()
    bad = {name: code for name, code in codes.items() if code != 0}
    if bad:
        logs = "".join(f"\n--- agent-{i + 1}:\n{a.log_tail()}" for i, a in enumerate(c.agents))
        pytest.fail(f"agents not exiting with 0 after SIGTERM, or cleanup errors: {bad}{logs}")


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
        cl = getattr(item, "funcargs", {}).get("cluster")
        if isinstance(cl, Cluster):
            for i, agent in enumerate(cl.agents):
                report.sections.append(
                    (f"agent-{i + 1} log tail ({agent.log_path})", agent.log_tail())
                )
