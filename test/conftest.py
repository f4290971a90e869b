"""Shared fixtures: isolated ROS 2 environments and real node processes.

Every test that starts ROS processes gets its own ``ROS_DOMAIN_ID`` and localhost-only discovery,
so tests (and several pytest runs on one machine) never see each other's topics.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_domains = itertools.count()


def _next_domain_id() -> int:
    # Spread over the valid Linux range [1, 101] by pid, so parallel pytest runs rarely collide.
    return 1 + (os.getpid() * 7 + next(_domains)) % 101


@pytest.fixture
def ros_env(tmp_path: Path) -> dict[str, str]:
    """Env for the ROS processes of one test: unique domain, localhost discovery, logs in tmp."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(_next_domain_id())
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_LOG_DIR"] = str(tmp_path / "ros_log")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class Process:
    """A child process in its own process group, its output kept in a log file for messages."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int | None:
        """Signal the group, wait, escalate to SIGKILL; returns the exit code."""
        if self.alive():
            self.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


@pytest.fixture
def spawn(ros_env: dict[str, str], tmp_path: Path) -> Iterator:
    """``spawn(args, env=None, name=None) -> Process``; every process is stopped at teardown."""
    procs: list[Process] = []

    def _spawn(args: list[str], env: dict[str, str] | None = None,
               name: str | None = None) -> Process:
        name = name or f"proc{len(procs)}"
        proc = Process(args, env or ros_env, tmp_path / f"{name}.log")
        procs.append(proc)
        return proc

    yield _spawn
    for proc in reversed(procs):
        proc.stop()


def python_args(*args: str) -> list[str]:
    """Command line running this interpreter (the project venv) with ``args``."""
    return [sys.executable, *args]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")


@pytest.fixture
def env(ros_env: dict[str, str]) -> dict[str, str]:
    """``ros_env`` with the package's shared-memory Fast DDS profile (camera-sized messages)."""
    from policy_node_support import with_fastdds_profile

    return with_fastdds_profile(ros_env)


@pytest.fixture
def probe(env: dict[str, str]) -> Iterator:
    """A probe node in the test process, on the test's domain (a module may override it)."""
    from policy_node_support import Probe

    p = Probe(int(env["ROS_DOMAIN_ID"]))
    yield p
    p.close()


@pytest.fixture
def keep_thread_count() -> Iterator[None]:
    """Restore torch's thread count after a test that runs a benchmark with ``--threads``."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
