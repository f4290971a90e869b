"""Runs labelled episodes on the simulated robot through the nodes' services (for ``make demo``).

An in-process rclpy node, spun on a background thread, that plays the operator: for each episode
it resets the simulator (``sim_robot/reset``), starts a recording (``recorder/start_episode``),
enables the actor (``demonstrator/enable`` or ``policy/enable``), and waits until the recorder
reports the episode ended (the actor's terminate) or the step budget runs out (then it disables
the actor and ends the episode itself). The simulator's success detector labels the episode
(``label_episodes``); should no label come, the driver labels it from ``task_success``.

Its plumbing (the node's thread, service calls with timeouts, the events received) is
:class:`OperatorNode`, which the recorder's fault suites (:mod:`qt_ros.faults.recorder_faults`)
use too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import rclpy
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger

from qt_ros.msg import EpisodeEvent
from qt_ros.nodes.qos import EPISODE_EVENTS_QOS, RELIABLE_QOS
from qt_ros.srv import EndEpisode, LabelEpisode, StartEpisode


class DriverError(RuntimeError):
    """A service that is missing or failed: the text names it and what it answered."""


@dataclass
class EpisodeOutcome:
    episode_id: str
    outcome: str  # success | failure | aborted | unknown
    ended_by: str  # "terminate" (the actor ended it) or "step limit"
    seconds: float  # from enable to the end
    bag: str
    scene: str  # the simulator's reset message (episode number and seed)


class OperatorNode:
    """An rclpy node in this process, spun on a background thread, that calls services and
    collects ``episode_events`` (``events``, in arrival order): the plumbing of
    :class:`EpisodeDriver` and of the recorder's fault suites. Use as a context manager."""

    def __init__(self, domain_id: int | None = None, name: str = "operator"):
        self.context = rclpy.Context()
        kwargs = {} if domain_id is None else {"domain_id": domain_id}
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO,
                   **kwargs)
        self.node = rclpy.create_node(name, context=self.context)
        self._lock = threading.Lock()
        self.events: list[EpisodeEvent] = []
        self.node.create_subscription(EpisodeEvent, "episode_events", self._on_event,
                                      EPISODE_EVENTS_QOS)
        self._clients: dict[str, object] = {}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - the context went away while spinning
                if not self.context.ok():
                    return
                raise

    def _on_event(self, msg: EpisodeEvent) -> None:
        with self._lock:
            self.events.append(msg)

    def _client(self, srv_type, name: str):
        if name not in self._clients:
            self._clients[name] = self.node.create_client(srv_type, name)
        return self._clients[name]

    def wait_for_service(self, srv_type, name: str, timeout: float, alive=None) -> None:
        """Wait until ``name`` is served; ``alive()`` (if given) may raise to stop waiting."""
        client = self._client(srv_type, name)
        deadline = time.monotonic() + timeout
        while not client.service_is_ready():
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                raise DriverError(f"service {name} did not appear within {timeout:g} s")
            time.sleep(0.05)

    def call(self, srv_type, name: str, request, timeout: float = 20.0):
        client = self._client(srv_type, name)
        self.wait_for_service(srv_type, name, timeout)
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise DriverError(f"no answer from {name} within {timeout:g} s")
            time.sleep(0.005)
        return future.result()

    def wait_event(self, match: Callable[[EpisodeEvent], bool],
                   timeout: float) -> EpisodeEvent | None:
        """The first event ``match`` accepts, waiting up to ``timeout`` s for it (else None)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = next((e for e in self.events if match(e)), None)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.01)

    def count(self, episode_id: str, kind: int) -> int:
        """Events of ``kind`` about ``episode_id`` received so far."""
        with self._lock:
            return sum(1 for e in self.events if e.episode_id == episode_id and e.event == kind)

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpisodeDriver(OperatorNode):
    """The operator's node (see the module docstring). Use as a context manager."""

    def __init__(self, domain_id: int | None = None, name: str = "demo_driver"):
        super().__init__(domain_id, name)
        self._success: bool | None = None
        self.node.create_subscription(Bool, "task_success", self._on_success, RELIABLE_QOS)

    def _on_success(self, msg: Bool) -> None:
        self._success = bool(msg.data)

    def wait_active(self, node: str, timeout: float, alive=None) -> None:
        """Wait until the lifecycle node ``node`` is active (the policy after loading)."""
        deadline = time.monotonic() + timeout
        name = f"{node}/get_state"
        self.wait_for_service(GetState, name, timeout, alive)
        label = "not answering"
        while True:
            try:  # a node busy configuring (loading its model) answers only afterwards
                state = self.call(GetState, name, GetState.Request(), timeout=2.0)
                if state.current_state.id == State.PRIMARY_STATE_ACTIVE:
                    return
                label = state.current_state.label
            except DriverError:
                pass
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                raise DriverError(f"{node} is {label!r}, not active, after {timeout:g} s")
            time.sleep(0.2)

    def _find(self, episode_id: str, kind: int) -> EpisodeEvent | None:
        return self.wait_event(lambda e: e.episode_id == episode_id and e.event == kind, 0)

    def _wait_event(self, episode_id: str, kind: int, timeout: float) -> EpisodeEvent | None:
        return self.wait_event(lambda e: e.episode_id == episode_id and e.event == kind, timeout)

    # ---------------------------------------------------------------- episodes

    def run_episode(self, actor: str, max_seconds: float, settle: float = 0.25) -> EpisodeOutcome:
        """One labelled episode with ``actor`` (``demonstrator`` or ``policy``)."""
        scene = self.call(Trigger, "sim_robot/reset", Trigger.Request())
        if not scene.success:
            raise DriverError(f"sim_robot/reset failed: {scene.message}")
        time.sleep(settle)  # frames of the new scene reach the nodes
        start = self.call(StartEpisode, "recorder/start_episode", StartEpisode.Request())
        if not start.success:
            raise DriverError(f"recorder/start_episode failed: {start.message}")
        episode = start.episode_id
        enable = self.call(SetBool, f"{actor}/enable", SetBool.Request(data=True))
        if not enable.success:
            raise DriverError(f"{actor}/enable failed: {enable.message}")
        began = time.monotonic()
        ended = self._wait_event(episode, EpisodeEvent.ENDED, max_seconds)
        ended_by = "terminate"
        if ended is None or ended.outcome == "aborted":
            ended_by = "step limit" if ended is None else "aborted"
            self.call(SetBool, f"{actor}/enable", SetBool.Request(data=False))
            if ended is None:
                time.sleep(0.05)  # the hold command reaches the recorder and the sim
                self.call(EndEpisode, "recorder/end_episode",
                          EndEpisode.Request(episode_id=episode, outcome="unknown"))
                ended = self._wait_event(episode, EpisodeEvent.ENDED, 10.0)
        seconds = time.monotonic() - began
        if ended is not None and ended.outcome not in ("unknown", ""):
            outcome = ended.outcome  # ended with an outcome (timeout, aborted): no label comes
        else:
            label = self._wait_event(episode, EpisodeEvent.LABELLED, 5.0)
            if label is None:  # the simulator did not label it: label it here
                outcome = "success" if self._success else "failure"
                self.call(LabelEpisode, "recorder/label_episode",
                          LabelEpisode.Request(episode_id=episode, outcome=outcome))
            else:
                outcome = label.outcome
        return EpisodeOutcome(episode_id=episode, outcome=outcome, ended_by=ended_by,
                              seconds=seconds, bag=start.bag_path, scene=scene.message)
