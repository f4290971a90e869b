"""Which topic of a bag plays which role in a training step, and how to read values from it.

Episode bags written by ``recorder_node`` describe their own topics (custom data ``qt_ros.topics``
or the catalog); the converter then needs no mapping: images from the ``image`` topic, actions
and bins from ``policy_step``. Bags recorded with plain ``ros2 bag record`` (teleoperated
demonstrations) are described by a YAML file given with ``qt-ros convert --mapping``::

    image: /camera/color/image_raw        # sensor_msgs/Image or CompressedImage
    instruction_topic: /instruction       # std_msgs/String (optional)
    instruction: put the cube in the bowl # used when there is no instruction message,
    instructions: {rosbag2_2026_01_05-11_00_00: open the drawer}   # or per bag
    state:                                # optional: what the policy sees besides images
      topic: /joint_states
      fields: [position]                  # default for sensor_msgs/JointState
    actions:                              # where each action dimension comes from
      - topic: /servo/delta_twist_cmds    # geometry_msgs/TwistStamped
        dims: [x, y, z, roll, pitch, yaw]
        scale: 0.1                        # e.g. m/s * control period = per-step delta
      - topic: /gripper_command           # std_msgs/Float64 (field "data" by default)
        dims: [gripper]
        initial: 0.0                      # value before its first message
    step: /servo/delta_twist_cmds         # one control step per message of this topic,
    # rate: 10.0                          # or a fixed rate in Hz
    # step_window: 0.02                   # see below
    max_image_age: 0.2                    # seconds; older images drop the step
    outcome: success                      # demonstrations are successes...
    labels: {rosbag2_2026_01_05-10_00_00: failure}   # ...unless labelled otherwise (per bag)
    source: demonstration

A tokenizer dimension that no action source provides must be ``terminate`` (set to 1 at the
last step, 0 before) or be given a ``constants: {name: value}`` entry.

A step is one decision: its action is each action topic's last value when the decision closes,
which is at the next camera frame or the next step (so a twist and a gripper command answering
one frame form one step in either order). A camera faster than the commands can put a frame
between the messages of one decision; ``step_window`` (seconds) then closes each decision that
long after its step instead (or at the next step), whatever frames arrive meanwhile. The step's
state is the one whose header stamp is the latest at or before its frame's (states without a
stamp: the latest one logged at the step).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POLICY_STEP_TYPE = "qt_ros/msg/PolicyStep"
EVENT_TYPE = "qt_ros/msg/EpisodeEvent"
OUTCOMES = ("success", "failure", "aborted", "unknown")
SOURCES = ("demonstration", "autonomous")

# Fields read by default from common command and state types.
DEFAULT_FIELDS: dict[str, list[str]] = {
    "geometry_msgs/msg/TwistStamped": ["twist.linear.x", "twist.linear.y", "twist.linear.z",
                                       "twist.angular.x", "twist.angular.y", "twist.angular.z"],
    "geometry_msgs/msg/Twist": ["linear.x", "linear.y", "linear.z",
                                "angular.x", "angular.y", "angular.z"],
    "sensor_msgs/msg/JointState": ["position"],
    "std_msgs/msg/Float64MultiArray": ["data"],
    "std_msgs/msg/Float32MultiArray": ["data"],
    "std_msgs/msg/Float64": ["data"],
    "std_msgs/msg/Float32": ["data"],
    "std_msgs/msg/Int32": ["data"],
    "std_msgs/msg/Bool": ["data"],
}


class MappingError(ValueError):
    """A topic mapping that cannot work for a bag; the text names the key and what to fix."""


@dataclass
class ActionSource:
    """Action dimensions ``dims`` read from ``fields`` of the messages on ``topic``."""

    topic: str
    dims: list[str]
    fields: list[str] | None = None
    scale: list[float] | float = 1.0
    initial: list[float] | float | None = None


@dataclass
class StateSource:
    topic: str
    fields: list[str] | None = None


@dataclass
class TopicMapping:
    """Roles of a bag's topics (see the module docstring for the YAML form)."""

    image: str = ""
    instruction_topic: str = ""
    instruction: str = ""
    state: StateSource | None = None
    policy_step: str = ""
    actions: list[ActionSource] = field(default_factory=list)
    step: str = ""
    rate: float = 0.0
    step_window: float | None = None  # None: a decision closes at the next frame
    max_image_age: float = 0.2
    outcome: str = "success"
    labels: dict[str, str] = field(default_factory=dict)
    instructions: dict[str, str] = field(default_factory=dict)
    source: str = "demonstration"
    constants: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TopicMapping:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MappingError(f"cannot read topic mapping {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise MappingError(f"topic mapping {path} must be a YAML mapping (key: value)")
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "topic mapping") -> TopicMapping:
        known = {"image", "instruction_topic", "instruction", "state", "policy_step", "actions",
                 "step", "rate", "step_window", "max_image_age", "outcome", "labels",
                 "instructions", "source", "constants"}
        unknown = set(data) - known
        if unknown:
            raise MappingError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        m = cls()
        for key in ("image", "instruction_topic", "instruction", "policy_step", "step", "outcome",
                    "source"):
            if key in data and data[key] is not None:
                setattr(m, key, str(data[key]))
        for key in ("rate", "step_window", "max_image_age"):
            if key in data and data[key] is not None:
                setattr(m, key, float(data[key]))
        if data.get("state"):
            state = data["state"]
            if isinstance(state, str):
                m.state = StateSource(state)
            else:
                m.state = StateSource(str(state["topic"]), _str_list(state.get("fields")))
        for i, entry in enumerate(data.get("actions") or []):
            if not isinstance(entry, dict) or "topic" not in entry or "dims" not in entry:
                raise MappingError(f"{where}: actions[{i}] needs 'topic' and 'dims'")
            m.actions.append(ActionSource(
                topic=str(entry["topic"]), dims=[str(d) for d in entry["dims"]],
                fields=_str_list(entry.get("fields")), scale=entry.get("scale", 1.0),
                initial=entry.get("initial")))
        m.labels = {str(k): str(v) for k, v in (data.get("labels") or {}).items()}
        m.instructions = {str(k): str(v) for k, v in (data.get("instructions") or {}).items()}
        m.constants = {str(k): float(v) for k, v in (data.get("constants") or {}).items()}
        m.validate(where)
        return m

    def validate(self, where: str = "topic mapping") -> None:
        for outcome in [self.outcome, *self.labels.values()]:
            if outcome not in OUTCOMES:
                raise MappingError(f"{where}: outcome '{outcome}' is not one of {OUTCOMES}")
        if self.source not in SOURCES:
            raise MappingError(f"{where}: source '{self.source}' is not one of {SOURCES}")
        if self.max_image_age <= 0:
            raise MappingError(f"{where}: max_image_age must be > 0 seconds")
        if self.rate < 0:
            raise MappingError(f"{where}: rate must be >= 0 Hz")
        if self.step_window is not None and self.step_window <= 0:
            raise MappingError(f"{where}: step_window must be > 0 seconds (or left out: a "
                               f"decision then closes at the next camera frame)")

    def merged(self, other: TopicMapping | None) -> TopicMapping:
        """This mapping with every role that ``other`` sets replaced by ``other``'s."""
        if other is None:
            return self
        out = TopicMapping(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        defaults = TopicMapping()
        for key in self.__dataclass_fields__:
            value = getattr(other, key)
            if value != getattr(defaults, key):
                setattr(out, key, value)
        if other.actions:
            out.policy_step = other.policy_step
        return out

    def check_dims(self, names: Sequence[str], terminate: str | None) -> None:
        """Every tokenizer dimension has exactly one source (a command or a constant), and
        a step topic among the action topics or a rate defines the steps."""
        if not self.actions:
            return
        if self.step and self.step not in {s.topic for s in self.actions}:
            raise MappingError(f"step topic '{self.step}' must be one of the action topics")
        if not self.step and self.rate <= 0:
            raise MappingError("the mapping needs 'step' (a command topic) or 'rate' (Hz) to "
                               "define control steps")
        provided: dict[str, str] = {}
        for src in self.actions:
            for d in src.dims:
                if d not in names:
                    raise MappingError(f"action dimension '{d}' of topic {src.topic} is not a "
                                       f"tokenizer dimension ({', '.join(names)})")
                if d in provided:
                    raise MappingError(f"action dimension '{d}' comes from both {provided[d]} "
                                       f"and {src.topic}")
                provided[d] = src.topic
        missing = [n for n in names if n not in provided and n not in self.constants
                   and n != terminate]
        if missing:
            raise MappingError(f"no source for action dimension(s) {', '.join(missing)}: add "
                               f"them to an 'actions' entry or to 'constants'")


def infer_roles(topics: Mapping[str, str]) -> dict[str, str]:
    """Guess roles from message types (topic -> type) for a qt_ros bag that lost its metadata."""
    roles: dict[str, str] = {}
    images = [t for t, ty in topics.items() if ty in IMAGE_TYPES]
    if len(images) == 1:
        roles["image"] = images[0]
    for t, ty in topics.items():
        if ty == POLICY_STEP_TYPE:
            roles.setdefault("policy_step", t)
        elif ty == "std_msgs/msg/String" and "instruction" in t:
            roles.setdefault("instruction", t)
        elif ty == "sensor_msgs/msg/JointState":
            roles.setdefault("state", t)
    return roles


def mapping_from_roles(roles: Mapping[str, str]) -> TopicMapping:
    """The mapping of a qt_ros episode bag from its recorded roles (role -> topic)."""
    m = TopicMapping(image=roles.get("image", ""),
                     instruction_topic=roles.get("instruction", ""),
                     policy_step=roles.get("policy_step", ""), source="autonomous",
                     outcome="unknown")
    if roles.get("state"):
        m.state = StateSource(roles["state"])
    return m


_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def read_fields(msg: Any, fields: Sequence[str], where: str) -> np.ndarray:
    """Values of dotted ``fields`` (``twist.linear.x``, ``position``, ``data[2]``) as float64."""
    out: list[float] = []
    for path in fields:
        value = msg
        for part in path.split("."):
            m = _PART.match(part)
            if m is None:
                raise MappingError(f"{where}: bad field path '{path}'")
            try:
                value = getattr(value, m.group(1))
                if m.group(2) is not None:
                    value = value[int(m.group(2))]
            except (AttributeError, IndexError, TypeError) as exc:
                raise MappingError(f"{where}: the message has no field '{path}' ({exc})") from None
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        out.extend(arr.tolist())
    return np.asarray(out, dtype=np.float64)


def header_stamp(msg: Any) -> int:
    """``header.stamp`` of a deserialized message in ns, 0 when it has none."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec) if stamp is not None else 0


def cdr_header_stamp(data: bytes) -> int:
    """``header.stamp`` in ns of a serialized message that starts with a header (images)."""
    if len(data) < 12:
        return 0
    order = "<" if data[1] & 1 else ">"  # CDR encapsulation: 0x0001 little endian
    sec, nanosec = struct.unpack_from(order + "iI", data, 4)
    return sec * 1_000_000_000 + nanosec


def default_fields(msgtype: str, topic: str) -> list[str]:
    try:
        return list(DEFAULT_FIELDS[msgtype])
    except KeyError:
        raise MappingError(f"topic {topic} ({msgtype}) has no default fields; list them with "
                           f"'fields' in the mapping (e.g. [pose.position.x, ...])") from None


def _str_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]
