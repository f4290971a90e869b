"""The demo's child processes (ROS nodes and ``qt-ros`` verbs), each in its own process group
with its output in a log file, and the config files they are started with."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class DemoError(RuntimeError):
    """A step of the demo that failed; the text says which and where its log is."""


class Processes:
    """Child processes, each in its own process group with its output in a log file."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.running: dict[str, tuple[subprocess.Popen, object]] = {}

    def start(self, name: str, args: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[name] = (proc, log)

    def check(self, *names: str) -> None:
        """Raise DemoError (with the end of its log) if one of ``names`` exited."""
        for name in names or list(self.running):
            proc, _ = self.running[name]
            if proc.poll() is not None:
                raise DemoError(f"the {name} node exited (status {proc.returncode}):\n"
                                f"{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def finished(self, name: str) -> int | None:
        """The exit status of ``name`` once it exited (then forgotten), else None."""
        proc, log = self.running[name]
        if proc.poll() is None:
            return None
        del self.running[name]
        log.close()
        return proc.returncode

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc, log = self.running.pop(name)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        log.close()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)
