"""A real engine under gunicorn on a loopback port, for multi-process and SDK tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pos_engine.api.signing import sign

STARTUP_TIMEOUT_S = 30.0


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pos_engine.cli", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pos-engine {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class LiveEngine:
    base_url: str
    env: dict[str, str]
    credentials: dict[str, Any]
    server_pid: int = 0  # gunicorn's master

    def terminal(self, index: int = 0) -> dict[str, str]:
        return self.credentials["terminals"][index]  # type: ignore[no-any-return]

    def signed_post(self, client: httpx.Client, terminal: dict[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
        raw = json.dumps(body).encode()
        timestamp = str(int(time.time()))
        headers = {
            "X-Terminal-Id": terminal["terminal_id"],
            "X-Timestamp": timestamp,
            "X-Signature": sign(terminal["secret"], "POST", path, timestamp, raw),
            "Content-Type": "application/json",
        }
        return client.post(self.base_url + path, content=raw, headers=headers)


@contextmanager
def live_engine(
    tmp_path: Path,
    *,
    workers: int = 3,
    threads: int | None = None,
    rules_dir: Path | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    preload: bool = False,
) -> Iterator[LiveEngine]:
    """Load the demo world into a database and serve it with gunicorn; stop it afterwards."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("POS_ENGINE_")}
    env["POS_ENGINE_DATABASE_URL"] = database_url or f"sqlite:///{tmp_path}/engine.sqlite3"
    env["POS_ENGINE_RULES_DIR"] = str(rules_dir or ROOT / "rules")
    if redis_url:
        env["POS_ENGINE_REDIS_URL"] = redis_url
        env["POS_ENGINE_REDIS_NAMESPACE"] = f"live-{uuid.uuid4().hex}"
    credentials_path = tmp_path / "demo.json"
    run_cli(env, "demo", "--reset", "--out", str(credentials_path))
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed below, after the server stops
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "-w", str(workers), "-b", f"127.0.0.1:{port}"]
        + ["--graceful-timeout", "2"]
        + ([] if threads is None else ["--threads", str(threads)])  # else gunicorn.conf.py's
        + (["--preload"] if preload else [])  # the app built in the master, the workers forked from it
        + ["pos_engine.wsgi:app"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise AssertionError(f"gunicorn exited: {(tmp_path / 'gunicorn.log').read_text()}")
            try:
                if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start: {(tmp_path / 'gunicorn.log').read_text()}")
            time.sleep(0.1)
        yield LiveEngine(base_url, env, json.loads(credentials_path.read_text()), server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        if redis_url:
            # Leave no counters or claims behind in the shared Redis.
            from pos_engine.store.redis_counters import RedisCounterStore

            RedisCounterStore.from_url(redis_url, namespace=env["POS_ENGINE_REDIS_NAMESPACE"]).reset()
