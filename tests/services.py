"""Services the tests start themselves, once per test session, on 127.0.0.1 (a pytest plugin,
loaded from tests/conftest.py): a real `redis-server`, a Dask cluster, an S3 server (moto)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_ping(port: int) -> bool:
    """True when a Redis server on `port` answers PING (plain RESP, no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(folder: Path, port: int | None = None) -> RedisServer:
    """A fresh `redis-server` on 127.0.0.1 (a free port unless given), without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    for _ in range(5):  # a free port may be taken between finding it and binding it: try another
        chosen = port or free_port()
        process = subprocess.Popen(
            [binary, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer(chosen, process, folder)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if answers_ping(chosen):
                return server
            time.sleep(0.02)  # polling for readiness, with a deadline
        server.stop()
        if port is not None:
            break
    raise RuntimeError(f"redis-server did not start on 127.0.0.1 (port {port or 'random'})")


def need_redis_server() -> None:
    """Skip (with the reason) where the binary is missing; CI installs it (.ci/run)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does it)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole test session, stopped at its end."""
    need_redis_server()
    with tempfile.TemporaryDirectory(prefix="ktrdr-redis-") as folder:
        server = start_redis(Path(folder))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis URL, its database emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    try:
        yield redis_server.url
    finally:
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()


@dataclass
class DaskCluster:
    address: str
    """tcp://127.0.0.1:PORT"""
    home: Path
    """KTRDR_COLLECT_HOME of the worker processes (their file pacer, when no pacing_url)."""

    @property
    def executor(self) -> str:
        return self.address.replace("tcp://", "dask://")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[DaskCluster]:
    """A `distributed.LocalCluster` of 3 process workers on 127.0.0.1 for the whole session."""
    import logging

    from distributed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="ktrdr-dask-") as folder:
        home = Path(folder) / "home"
        cluster = LocalCluster(n_workers=3, threads_per_worker=2, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                               env={"KTRDR_COLLECT_HOME": str(home)})
        try:
            yield DaskCluster(cluster.scheduler_address, home)
        finally:
            cluster.close()


@dataclass
class S3Server:
    """moto's S3-compatible server (`python -m moto.server`) on 127.0.0.1."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def answers_http(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server process for the whole session (its own process: the tests' threads and
    the server's never share a GIL), stopped at its end."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = S3Server(port, process)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None and not answers_http(port):
            time.sleep(0.02)  # polling for readiness, with a deadline
        if process.poll() is None and answers_http(port):
            try:
                yield server
            finally:
                server.stop()
            return
        server.stop()
    raise RuntimeError("moto.server did not start on 127.0.0.1")


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<a fresh bucket>/data`` on the session's S3 server; the AWS variables (endpoint,
    dummy credentials) are set for this process and the processes it starts."""
    import uuid

    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"ktrdr-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_server.endpoint).mkdir(bucket)
    return f"s3://{bucket}/data"
