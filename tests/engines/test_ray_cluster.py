"""`--ray-address HOST:PORT` against a real `ray start --head` cluster that has token
authentication on (Ray turns it on when the head's machine has a token): without the
token, one clear line and exit 2 within seconds, none of Ray's `InvalidAuthToken` log
lines; with RAY_AUTH_MODE=token and the cluster's token, the same command works.

The cluster runs in a temporary HOME and temp dir, and is stopped by the ids of its own
processes (never `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                pids.append(int(entry))
    return pids


def _stop(temp: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_mentioning(temp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _pids_mentioning(temp) and time.monotonic() < deadline:
            time.sleep(0.2)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, "HOME": str(home), **extra}


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A `ray start --head` cluster (2 CPUs) whose machine has a token: auth is on."""
    home = tmp_path_factory.mktemp("head-home")
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    env = _env(home)
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=60)
    try:
        subprocess.run([str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
                        "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}", home / ".ray" / "auth_token"
    finally:
        _stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def photos_dir(photos, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in photos[:4]:
        shutil.copy(p, folder / p.name)
    return folder


def _index(address: str, folder: Path, db: Path, env: dict[str, str]
           ) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "clipsift", "index", str(folder), "--index", str(db),
         "--model", "fake", "--engine", "ray", "--ray-address", address, "-q"],
        env=env, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - t0


def test_without_the_token_one_clear_line_fast(head, photos_dir, tmp_path):
    address, _ = head
    done, seconds = _index(address, photos_dir, tmp_path / "a.db", _env(tmp_path))
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert "requires token authentication" in err and "RAY_AUTH_MODE=token" in err
    assert "ray get-auth-token" in err and "--ray-address auto" in err
    assert "InvalidAuthToken" not in err and "Traceback" not in err
    assert len(err.splitlines()) <= 2, err
    assert seconds < 20, seconds  # not Ray's ~20 s of retries plus start-up


def test_with_the_wrong_token_it_says_so(head, photos_dir, tmp_path):
    address, _ = head
    wrong = tmp_path / "token"
    wrong.write_text("0" * 32)
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong))
    done, _ = _index(address, photos_dir, tmp_path / "w.db", env)
    assert done.returncode == 2, done.stderr
    assert "refused this machine's token" in done.stderr
    assert "InvalidAuthToken" not in done.stderr


def test_nothing_listening_is_said_at_once(photos_dir, tmp_path):
    done, seconds = _index(f"127.0.0.1:{_free_port()}", photos_dir, tmp_path / "n.db",
                           _env(tmp_path))
    assert done.returncode == 2 and "cannot reach a Ray cluster" in done.stderr
    assert seconds < 20, seconds


def test_with_the_token_the_cluster_embeds(head, photos_dir, tmp_path):
    """With the token it runs; a model whose module the Ray workers cannot import (the
    test plugin loaded from its .py file) stops with one clear error, not a Ray traceback;
    named by module (importable on the workers), the same run embeds every image."""
    address, token = head
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    done, _ = _index(address, photos_dir, tmp_path / "file.db", env)
    assert done.returncode == 2, done.stderr
    assert "Ray workers cannot load the model" in done.stderr
    assert "'fake_model'" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "CLIPSIFT_PLUGINS" in done.stderr.strip().splitlines()[-1]
    env["CLIPSIFT_PLUGINS"] = "tests.support.fake_model"
    done, _ = _index(address, photos_dir, tmp_path / "ok.db", env)
    assert done.returncode == 0, done.stderr
    from clipsift.index.index import Index

    with Index.open(tmp_path / "ok.db") as idx:
        assert idx.count("ok") == 4
