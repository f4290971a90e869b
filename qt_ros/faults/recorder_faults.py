"""Recorder and checkpoint faults (``qt-ros bench faults --only recorder``).

- **checkpoints**: malformed checkpoint directories
  (:mod:`qt_ros.faults.checkpoint_faults`); counts clear errors against raw exceptions.
- **disk_full**: a real recorder process whose record_dir is a small tmpfs (mounted in a private
  user and mount namespace, ``unshare -rm``; skipped where that is not allowed) with
  ``min_free_space_mb: 0``: an earlier episode, one that fills the disk, a start while it is
  full, then space given back and one more episode. Counts catalog/disk disagreements (an
  episode the catalog says is ``recording`` while none is, a status that does not match its
  bag), orphan bag directories, earlier bags damaged, and whether recording resumes.
- **lost_start**: ``start_episode`` requests whose client is gone before the answer comes (the
  response is lost), then retried; counts retries answered with the running episode's id and
  episodes that no client learnt the id of.
- **double_label**: a policy that terminates on its first step (its terminate step and its own
  ``end_episode`` call, as the policy node sends them) with the simulator's success detector
  labelling (a real ``sim_robot_node``); counts label and end events per episode.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qt_ros.faults.checkpoint_faults import run_checkpoints

# -- real recorder processes ----------------------------------------------------------------------


def _operator(domain_id: int):
    """An :class:`~qt_ros.nodes.episode_driver.OperatorNode` (imported here: this module loads
    without rclpy) that can also send a request whose answer is lost."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from qt_ros.nodes.episode_driver import DriverError, OperatorNode

    class Operator(OperatorNode):
        def __init__(self) -> None:
            super().__init__(domain_id, f"recorder_faults_{os.getpid()}")
            # A node nobody spins: what it sends arrives, the answers are never read (lost).
            self.deaf_context = rclpy.Context()
            rclpy.init(context=self.deaf_context, domain_id=domain_id,
                       signal_handler_options=SignalHandlerOptions.NO)
            self.deaf = rclpy.create_node(f"recorder_faults_deaf_{os.getpid()}",
                                          context=self.deaf_context)

        def send(self, srv_type, name: str, request, timeout: float = 30.0,
                 abandon: bool = False):
            """Call a service and return its answer (None when none came), or (``abandon``)
            send from a node that never reads its answers: the response is lost, as when a
            caller times out or dies. A service that does not appear raises DriverError."""
            if not abandon:
                self.wait_for_service(srv_type, name, timeout)
                try:
                    return self.call(srv_type, name, request, timeout)
                except DriverError:
                    return None
            client = self.deaf.create_client(srv_type, name)
            deadline = time.monotonic() + timeout
            while not client.service_is_ready():
                if time.monotonic() > deadline:
                    raise DriverError(f"service {name} did not appear within {timeout:g} s")
                time.sleep(0.05)
            client.call_async(request)
            return None

        def close(self) -> None:
            self.deaf.destroy_node()
            self.deaf_context.try_shutdown()
            super().close()

    return Operator()


class _Processes:
    """Child processes of one suite, on one ROS domain, logs in ``logs``; stopped on exit."""

    def __init__(self, logs: Path, domain_id: int) -> None:
        self.logs, self.procs = logs, []
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "PYTHONUNBUFFERED": "1",
                    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOG_DIR": str(logs)}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> _Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def _recorder_args(record_dir: Path, **params) -> list[str]:
    args = [sys.executable, "-m", "qt_ros.nodes.recorder_node", "--ros-args",
            "-p", f"record_dir:={record_dir}"]
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    return args


def _catalog(record_dir: Path) -> dict:
    path = record_dir / "catalog.json"
    return json.loads(path.read_text())["episodes"] if path.exists() else {}


def _disagreements(record_dir: Path, running: str = "") -> list[str]:
    """Episodes whose catalog status is not what their bag directory shows."""
    wrong = []
    for episode_id, record in _catalog(record_dir).items():
        closed = (record_dir / record.get("bag", episode_id) / "metadata.yaml").exists()
        status = record.get("status")
        if (status == "recording" and episode_id != running) or \
                (status == "complete") != closed:
            wrong.append(f"{episode_id}: {status}, bag {'closed' if closed else 'open'}")
    return wrong


def _orphans(record_dir: Path) -> list[str]:
    catalog = _catalog(record_dir)
    return sorted(p.name for p in record_dir.iterdir() if p.is_dir() and p.name not in catalog)


def _image(k: int, size: int = 200):
    import numpy as np
    from sensor_msgs.msg import Image

    msg = Image(height=size, width=size, encoding="rgb8", step=3 * size)
    msg.data = np.random.default_rng(k).integers(0, 256, 3 * size * size, np.uint8).tobytes()
    return msg



def run_disk_full(root: Path, domain_id: int, tmpfs_mb: int = 16) -> dict:
    """The disk fills under a recorder with ``min_free_space_mb: 0`` (see the module docstring)."""
    from qt_ros.srv import EndEpisode, StartEpisode

    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        return {"skipped": "`unshare -rm` (a private tmpfs) is not allowed here"}
    record_dir = root / "full"
    record_dir.mkdir()
    script = (f"mount -t tmpfs -o size={tmpfs_mb}m none {record_dir} && exec "
              + " ".join(_recorder_args(record_dir, min_free_space_mb=0.0, flush_period=0.2)))
    with _Processes(root, domain_id) as procs:
        recorder = procs.start("recorder_full", ["unshare", "-rm", "sh", "-c", script])
        seen = Path(f"/proc/{recorder.pid}/root") / str(record_dir).lstrip("/")  # its tmpfs
        operator = _operator(domain_id)
        try:
            return _fill_the_disk(operator, seen, StartEpisode, EndEpisode)
        finally:
            operator.close()


def _fill_the_disk(operator, seen: Path, StartEpisode, EndEpisode) -> dict:
    from sensor_msgs.msg import Image

    from qt_ros.msg import EpisodeEvent
    from qt_ros.nodes.qos import RELIABLE_QOS

    start, end = "/recorder/start_episode", "/recorder/end_episode"
    images = operator.node.create_publisher(Image, "image", RELIABLE_QOS)
    first = operator.send(StartEpisode, start, StartEpisode.Request(instruction="first",
                                                                    episode_id="first"))
    while images.get_subscription_count() == 0:
        time.sleep(0.05)
    for k in range(5):
        images.publish(_image(k, 20))
        time.sleep(0.05)
    time.sleep(0.3)
    operator.send(EndEpisode, end, EndEpisode.Request(outcome="success"))
    ballast = seen / "ballast"  # what "freeing space" deletes later
    with open(ballast, "wb") as f:
        f.write(b"\0" * (3 << 20))
    operator.send(StartEpisode, start, StartEpisode.Request(instruction="fill", episode_id="fill"))
    started, k = time.monotonic(), 0
    while operator.count("fill", EpisodeEvent.ENDED) == 0 and time.monotonic() - started < 60:
        images.publish(_image(k))
        k += 1
        time.sleep(0.02)
    time.sleep(0.5)
    report = {"first_started": bool(first and first.success),
              "error_events": operator.count("fill", EpisodeEvent.ERROR),
              "ended": [e.outcome for e in operator.events if e.episode_id == "fill"
                        and e.event == EpisodeEvent.ENDED],
              "disagreements_while_full": _disagreements(seen)}
    refused = operator.send(StartEpisode, start, StartEpisode.Request(instruction="while full"))
    report["start_while_full"] = "started" if refused.success else refused.message[:160]
    report["orphans_while_full"] = _orphans(seen)
    ballast.unlink()
    deadline = time.monotonic() + 5
    while _disagreements(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    report["disagreements_after_space_back"] = _disagreements(seen)
    again = operator.send(StartEpisode, start, StartEpisode.Request(instruction="after"))
    report["resumed"] = bool(again.success)
    if again.success:
        operator.send(EndEpisode, end, EndEpisode.Request(outcome="success"))
    report["orphans_after"] = _orphans(seen)
    report["disagreements_after"] = _disagreements(seen)
    from qt_ros.episodes.bag_reader import BagReader
    try:
        with BagReader.open(seen / "first") as bag:
            report["earlier_bag_intact"] = bag.complete and bag.topics["/image"].count == 5
    except Exception as exc:  # noqa: BLE001 - what is being measured
        report["earlier_bag_intact"] = f"unreadable: {exc}"
    return report


def run_lost_start(root: Path, domain_id: int, trials: int) -> dict:
    """start_episode answers that never arrive, then retries (see the module docstring)."""
    from qt_ros.msg import EpisodeEvent
    from qt_ros.srv import EndEpisode, StartEpisode

    answered, known, unknown, lost_requests = 0, set(), [], 0
    with _Processes(root, domain_id) as procs:
        procs.start("recorder_lost", _recorder_args(root / "lost", min_free_space_mb=1.0))
        operator = _operator(domain_id)
        try:
            for k in range(trials):
                request = StartEpisode.Request(instruction=f"task {k}",
                                               episode_id=f"lost-{k}" if k % 2 == 0 else "")
                operator.send(StartEpisode, "/recorder/start_episode", request, abandon=True)
                first = operator.wait_event(lambda e, k=k: e.event == EpisodeEvent.STARTED
                                            and e.instruction == f"task {k}", 10)
                lost_requests += first is None
                retry = operator.send(StartEpisode, "/recorder/start_episode", request)
                ok = (retry is not None and retry.success and first is not None
                      and retry.episode_id == first.episode_id)
                answered += ok
                if retry is not None and retry.episode_id:
                    known.add(retry.episode_id)
                time.sleep(0.2)
                # the operator ends what it knows of; an unknown episode ends by an id-less end
                operator.send(EndEpisode, "/recorder/end_episode",
                              EndEpisode.Request(episode_id=retry.episode_id if ok else "",
                                                 outcome="unknown"))
            unknown = sorted(set(_catalog(root / "lost")) - known)
        finally:
            operator.close()
    return {"trials": trials, "first_requests_lost_too": lost_requests,
            "retries_answered_with_the_id": answered, "episodes_no_client_knew": len(unknown)}


def run_double_label(root: Path, domain_id: int, trials: int) -> dict:
    """A policy terminating on its first step, the simulator labelling (module docstring)."""
    from qt_ros.msg import EpisodeEvent, PolicyStep
    from qt_ros.nodes.qos import RELIABLE_QOS
    from qt_ros.srv import EndEpisode, StartEpisode

    labels, ends = [], []
    with _Processes(root, domain_id) as procs:
        procs.start("recorder_label", _recorder_args(root / "label", min_free_space_mb=1.0))
        procs.start("sim", [sys.executable, "-m", "qt_ros.nodes.sim_robot_node", "--ros-args",
                            "-p", "image_width:=64", "-p", "image_height:=64"])
        operator = _operator(domain_id)
        try:
            steps = operator.node.create_publisher(PolicyStep, "policy_step", RELIABLE_QOS)
            deadline = time.monotonic() + 60
            while operator.node.count_subscribers("/episode_events") < 2:  # sim + recorder
                if time.monotonic() > deadline:
                    return {"error": "the simulator did not start"}
                time.sleep(0.1)
            for k in range(trials):
                episode = f"terminate-{k}"
                operator.send(StartEpisode, "/recorder/start_episode",
                              StartEpisode.Request(instruction="lift", episode_id=episode))
                operator.wait_event(lambda e, i=episode: e.episode_id == i, 5)
                steps.publish(PolicyStep(episode_id=episode, terminate=True, model_id="m"))
                operator.send(EndEpisode, "/recorder/end_episode",  # as policy_output does
                              EndEpisode.Request(episode_id=episode, outcome="unknown"),
                              abandon=True)
                time.sleep(3.0)
                labels.append(operator.count(episode, EpisodeEvent.LABELLED))
                ends.append(operator.count(episode, EpisodeEvent.ENDED))
            catalog = _catalog(root / "label")
        finally:
            operator.close()
    return {"trials": trials, "label_events_per_episode": labels, "end_events_per_episode": ends,
            "catalog_labels_per_episode": [len(catalog.get(f"terminate-{k}", {}).get("labels", []))
                                           for k in range(trials)],
            "episodes_labelled_more_than_once": sum(n > 1 for n in labels)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recorder-trials", type=int, default=6,
                        help="trials of the lost-response and double-label faults")


def run(args: argparse.Namespace) -> dict:
    """All recorder faults: counts as a dict (see the module docstring)."""
    trials = getattr(args, "recorder_trials", 6)
    domain_id = 1 + (os.getpid() * 13 + getattr(args, "seed", 0)) % 100
    report = {"checkpoints": run_checkpoints()}  # policy node's input, checked the same way
    with tempfile.TemporaryDirectory(prefix="qt_ros_recorder_faults_") as tmp:
        root = Path(tmp)
        report["disk_full"] = run_disk_full(root, domain_id)
        report["lost_start"] = run_lost_start(root, domain_id, trials)
        report["double_label"] = run_double_label(root, domain_id, max(1, trials // 2))
    return report
