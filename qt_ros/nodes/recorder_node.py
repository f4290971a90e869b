"""recorder_node: records every episode into its own rosbag2 (MCAP) bag, with its label.

Subscriptions are ``raw=True``: the serialized CDR bytes go straight to the bag writer of
:mod:`qt_ros.episodes.recorder` (no deserialization on the robot, no rosbag2 needed). The node only
turns ROS callbacks and services into calls of that core and publishes ``episode_events``.

Services: ``~/start_episode`` (StartEpisode), ``~/end_episode`` (EndEpisode),
``~/label_episode`` (LabelEpisode). Topic: ``episode_events`` (EpisodeEvent, reliable, transient
local, depth 10). Parameters: the fields of ``RecorderNodeConfig``
(:mod:`qt_ros.episodes.recorder_config`), documented in ``config/recorder.yaml``.

``start_episode`` is safe to retry: a request repeating the one that started the running episode
(the same ``episode_id``, or none and the same instruction within ``START_REPEAT_WINDOW`` s)
answers with that episode, and every answer carries the id of the episode recording, if any.
Ending an episode that already ended publishes no second ENDED (an outcome given then is a label:
one LABELLED), so each decision is one event.

An episode that ends by terminate or ``end_episode`` stays open ``end_grace`` s more: the node
takes what its subscriptions receive meanwhile straight from them (the executor is busy in the
ending callback), so the last tick's messages still on their way (the state the simulator
publishes with the last frame, when the command answering it came first) are in the bag.

An episode also ends on the policy's terminate flag (``PolicyStep.terminate``; outcome
``unknown``, to be labelled), on ``max_episode_duration`` (``timeout_outcome``), when the disk
gets below ``min_free_space_mb`` (``aborted``, with an error event) and on shutdown (``aborted``).
"""

from __future__ import annotations

import importlib
import re
import sys
import time

from rclpy.node import Node
from rclpy.serialization import deserialize_message
from rosbags.typesys import get_types_from_msg
from std_msgs.msg import String

from qt_ros.episodes.bag_writer import offered_qos
from qt_ros.episodes.disk_reserve import NODE_RESERVE_MB
from qt_ros.episodes.recorder import EpisodeRecorder, RecorderError, event_fields
from qt_ros.episodes.recorder_config import NOT_PARAMETERS, RecorderNodeConfig
from qt_ros.msg import EpisodeEvent, PolicyStep
from qt_ros.nodes.node_parameters import declare_config
from qt_ros.nodes.qos import EPISODE_EVENTS_QOS, RECORDER_QOS_NAMES, recorder_qos
from qt_ros.nodes.runner import run_node
from qt_ros.srv import EndEpisode, LabelEpisode, StartEpisode

# role -> QoS of its subscription; the topic and type parameters are <role>_topic, <role>_type.
ROLES: dict[str, str] = {
    "image": "sensor_data",
    "instruction": "latched",
    "arm_command": "reliable",
    "gripper_command": "reliable",
    "policy_step": "reliable",
    "state": "sensor_data",
}
# Roles whose message type is fixed (no <role>_type parameter).
FIXED_TYPES = {"instruction": "std_msgs/msg/String", "policy_step": "qt_ros/msg/PolicyStep"}


class RecorderNode(Node):
    """Thin ROS shell around :class:`qt_ros.episodes.recorder.EpisodeRecorder`."""

    def __init__(self) -> None:
        super().__init__("recorder")
        # Every parameter (config/recorder.yaml documents them), from RecorderNodeConfig.
        self.config = declare_config(self, RecorderNodeConfig, skip=NOT_PARAMETERS,
                                     events_topic=self._resolve("episode_events"))
        self.recorder = EpisodeRecorder(self.config, reserve_mb=NODE_RESERVE_MB)
        stale = self.recorder.recover()
        if stale:
            self.get_logger().warning(
                f"{len(stale)} episode(s) left recording by a previous run are marked incomplete "
                f"(`qt-ros repair` completes their bags): {', '.join(stale)}")

        self.events = self.create_publisher(EpisodeEvent, "episode_events", EPISODE_EVENTS_QOS)
        self._subs = []
        self._topics: list[str] = []  # the topic each of _subs records
        self._policy_topic = self._instruction_topic = ""
        for role, qos in ROLES.items():
            topic = getattr(self.config, f"{role}_topic")
            msgtype = FIXED_TYPES.get(role) or getattr(self.config, f"{role}_type")
            if topic:
                self._subscribe(topic, msgtype, qos, role)
        for spec in self.config.extra_topics:
            if spec.strip():
                self._subscribe(*_parse_extra(spec), role="")

        self.create_service(StartEpisode, "~/start_episode", self._on_start)
        self.create_service(EndEpisode, "~/end_episode", self._on_end)
        self.create_service(LabelEpisode, "~/label_episode", self._on_label)
        self.create_timer(0.1, self._on_timer)
        self.get_logger().info(
            f"recording into {self.recorder.record_dir}: "
            + ", ".join(s.topic_name for s in self._subs))

    # -- subscriptions -----------------------------------------------------------------------

    def _resolve(self, name: str) -> str:
        if name.startswith("/"):
            return name
        ns = self.get_namespace().rstrip("/")
        return f"{ns}/{name}"

    def _subscribe(self, topic: str, msgtype: str, qos: str, role: str) -> None:
        cls = _message_class(msgtype)
        profile = recorder_qos(qos, self.config.sensor_qos_depth)
        name = self._resolve(topic)
        msgdef = rihs01 = None
        if msgtype not in self.recorder.typestore.fielddefs:
            msgdef, rihs01 = _definition_from_class(self.recorder.typestore, cls, msgtype)
        self.recorder.add_topic(name, msgtype, role=role, msgdef=msgdef, rihs01=rihs01,
                                latched=qos == "latched", qos=offered_qos(profile))
        if role == "instruction":
            self._instruction_topic = name
        if role == "policy_step":
            self._policy_topic = name
            callback = self._on_policy_step
        else:
            def callback(data: bytes, topic: str = name) -> None:
                self.recorder.write(topic, self._now(), data)
        self._subs.append(self.create_subscription(cls, name, callback, profile, raw=True))
        self._topics.append(name)

    # -- callbacks ----------------------------------------------------------------------------

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_policy_step(self, data: bytes) -> None:
        self.recorder.write(self._policy_topic, self._now(), data)
        if self.recorder.active_id is None:
            return
        step = deserialize_message(data, PolicyStep)
        self.recorder.note_checkpoint(step.model_id)
        if self.config.end_on_terminate and step.terminate and (
                not step.episode_id or step.episode_id == self.recorder.active_id):
            self._settle()
            self._end("unknown", -1.0, "policy terminate")

    def _on_timer(self) -> None:
        due = self.recorder.poll(self._now())
        if due is not None:
            outcome, reason = due
            if outcome == "aborted":  # a disk or write failure, not a timeout
                self.get_logger().error(reason)
                self._publish(EpisodeEvent.ERROR, self.recorder.active_record or {}, reason)
            self._end(outcome, -1.0, reason)
        caught_up = self.recorder.retry_catalog()
        if caught_up:
            self.get_logger().info(caught_up)

    def _on_start(self, request, response):
        instruction = request.instruction or self._latest_instruction()
        record = self.recorder.repeated_start(instruction, request.episode_id, self._now())
        if record is not None:  # a retry whose first answer was lost: the same answer
            self._answer_start(response, record)
            response.message = (f"already recording episode {record['episode_id']}: this "
                                 f"start_episode repeats the one that started it")
            self.get_logger().info(response.message)
            return response
        try:
            record = self.recorder.start(instruction, request.episode_id, self._now())
        except RecorderError as exc:
            running = self.recorder.active_record
            if running is not None:  # the answer names what is recording
                self._answer_start(response, running)
            response.success, response.message = False, str(exc)
            self.get_logger().error(str(exc))
            self._publish(EpisodeEvent.ERROR, {"episode_id": request.episode_id,
                                  "instruction": request.instruction}, str(exc))
            return response
        self._answer_start(response, record)
        response.message = f"recording episode {record['episode_id']}"
        self.get_logger().info(f"{response.message}: '{record['instruction']}'")
        self._publish(EpisodeEvent.STARTED, record, "started")
        return response

    def _answer_start(self, response, record: dict) -> None:
        response.success = True
        response.episode_id = record["episode_id"]
        response.bag_path = str(self.recorder.record_dir / record["bag"])

    def _on_end(self, request, response):
        running = self.recorder.active_id
        ends_running = running is not None and request.episode_id in ("", running)
        if ends_running:
            self._settle()
        try:
            record, message = self.recorder.end(request.episode_id, request.outcome,
                                                request.reward, "end_episode", self._now())
        except RecorderError as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success, response.message = True, message
        response.bag_path = str(self.recorder.record_dir / record["bag"])
        if ends_running:
            self._announce_end(record, message)
        else:  # it had already ended (e.g. on the policy's terminate step): no second ENDED
            self.get_logger().info(message)
            if request.outcome not in ("", "unknown"):  # the outcome was applied as a label
                self._publish(EpisodeEvent.LABELLED, record, message)
        return response

    def _on_label(self, request, response):
        try:
            record = self.recorder.label(request.episode_id, request.outcome, request.reward,
                                         self._now())
        except RecorderError as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success = True
        response.message = (f"episode {request.episode_id} labelled {record['outcome']} "
                            f"(reward {record['reward']:g})")
        self.get_logger().info(response.message)
        self._publish(EpisodeEvent.LABELLED, record, response.message)
        return response

    # -- helpers ------------------------------------------------------------------------------

    def _settle(self) -> None:
        """Record ``end_grace`` s more, taking messages from the subscriptions directly. They
        are only written: a policy step taken here is not checked for terminate (the episode
        is ending already) nor for its checkpoint id (its earlier steps gave it)."""
        deadline = time.monotonic() + self.config.end_grace
        while True:
            for sub, topic in zip(self._subs, self._topics, strict=True):
                with sub.handle:
                    while (taken := sub.handle.take_message(sub.msg_type, sub.raw)) is not None:
                        self.recorder.write(topic, self._now(), taken[0])
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def _end(self, outcome: str, reward: float, reason: str) -> dict | None:
        try:
            record, message = self.recorder.end("", outcome, reward, reason, self._now())
        except RecorderError as exc:
            self.get_logger().error(str(exc))
            return None
        self._announce_end(record, message)
        return record

    def _announce_end(self, record: dict, message: str) -> None:
        if "error" in record:
            self.get_logger().error(record["error"])
            self._publish(EpisodeEvent.ERROR, record, record["error"])
        self.get_logger().info(message)
        self._publish(EpisodeEvent.ENDED, record, record.get("end_reason", message))

    def _publish(self, kind: int, record: dict, message: str) -> None:
        fields = event_fields(kind, record, message, str(self.recorder.record_dir))
        msg = EpisodeEvent(**fields)
        now = self.get_clock().now().to_msg()
        msg.header.stamp = now
        msg.stamp = now
        self.events.publish(msg)

    def _latest_instruction(self) -> str:
        data = self.recorder.latched(self._instruction_topic) if self._instruction_topic else None
        return deserialize_message(data, String).data if data else ""

    def shutdown_episode(self) -> None:
        """End a running episode as aborted (after rclpy shut down: no event, log to stderr)."""
        record = self.recorder.shutdown()
        if record is not None:
            # rosout is gone once the context is shut down
            print(f"[recorder] episode {record['episode_id']} ended by shutdown (outcome "
                  f"aborted), bag {self.recorder.record_dir / record['bag']}", file=sys.stderr)


def _parse_extra(spec: str) -> tuple[str, str, str]:
    """"TOPIC:TYPE[:QOS]" -> (topic, type, qos)."""
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"extra_topics entry '{spec}' is not 'TOPIC:TYPE[:QOS]' "
                         f"(e.g. '/tf:tf2_msgs/msg/TFMessage:reliable')")
    qos = parts[2] if len(parts) == 3 else "reliable"
    if qos not in RECORDER_QOS_NAMES:
        raise ValueError(f"extra_topics entry '{spec}': QoS '{qos}' is not one of "
                         f"{RECORDER_QOS_NAMES}")
    return parts[0], parts[1], qos


def _message_class(msgtype: str):
    """'pkg/msg/Type' (or 'pkg/Type') -> the rclpy message class."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ValueError(f"message type '{msgtype}' is not 'package/msg/Type'")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"message type '{msgtype}' is not installed ({exc}); install its "
                         f"interface package or fix the *_type / extra_topics parameter") from exc


_IDL_TO_MSG = {"boolean": "bool", "octet": "byte", "double": "float64", "float": "float32",
               "long double": "float64"}


def _definition_from_class(store, cls, msgtype: str) -> tuple[str, str]:
    """Register an rclpy message type the typestore lacks (and its nested types); returns the
    (msgdef, RIHS01 hash) the bag needs for it."""

    def field_type(idl: str) -> tuple[str, type | None]:
        m = re.fullmatch(r"sequence<(.+?)(?:, (\d+))?>", idl)
        if m:
            inner, nested = field_type(m.group(1))
            return inner + (f"[<={m.group(2)}]" if m.group(2) else "[]"), nested
        m = re.fullmatch(r"(.+)\[(\d+)\]", idl)
        if m:
            inner, nested = field_type(m.group(1))
            return f"{inner}[{m.group(2)}]", nested
        if "/" in idl:
            pkg, name = idl.split("/")
            return f"{pkg}/{name}", _message_class(f"{pkg}/msg/{name}")
        return _IDL_TO_MSG.get(idl, idl), None

    def register(c, name: str) -> None:
        if name in store.fielddefs:
            return
        lines = []
        for field, idl in c.get_fields_and_field_types().items():
            ftype, nested = field_type(idl)
            if nested is not None:
                register(nested, f"{nested.__module__.split('.')[0]}/msg/{nested.__name__}")
            lines.append(f"{ftype} {field}")
        store.register(get_types_from_msg("\n".join(lines) + "\n", name))

    register(cls, msgtype)
    msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    return msgdef, store.hash_rihs01(msgtype)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run qt_ros recorder_node``; on shutdown the running episode is
    closed (outcome ``aborted``) so its bag is complete."""
    return run_node(RecorderNode, name="recorder_node", teardown=RecorderNode.shutdown_episode,
                    errors=(ValueError, RecorderError), args=args)


if __name__ == "__main__":
    sys.exit(main())
