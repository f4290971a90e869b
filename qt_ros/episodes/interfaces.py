# ruff: noqa: E501  (the message definitions below are verbatim copies of msg/*.msg)
"""The package's own message definitions, for reading and writing bags without ROS.

A machine that converts bags may have no ROS install and no colcon build, so the core cannot
import ``qt_ros.msg``. The bags themselves carry their definitions (MCAP schemas, rosbag2
``message_definitions``), and this module carries a copy of ``msg/*.msg`` for writing bags and for
old or damaged bags that lost them. ``test/episodes/test_bags.py`` fails when the copy differs from
``msg/``: update both together.
"""

from __future__ import annotations

import functools

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

POLICY_STEP = "qt_ros/msg/PolicyStep"
EPISODE_EVENT = "qt_ros/msg/EpisodeEvent"

# Verbatim copies of msg/PolicyStep.msg and msg/EpisodeEvent.msg.
MSG_DEFINITIONS: dict[str, str] = {
    POLICY_STEP: """\
# One control step of the Q-Transformer policy: what it saw, what it chose and why.
# Published by policy_node at every control tick; recorded by recorder_node.

std_msgs/Header header

# Episode this step belongs to (empty when no episode is running).
string episode_id

# Instruction the policy was conditioned on.
string instruction

# Chosen bin of every action dimension, in tokenizer order (e.g. x y z roll pitch yaw gripper terminate).
int32[] action_bins

# Continuous action: the centre of each chosen bin, in the tokenizer's units.
float64[] action

# Names of the action dimensions, same order as action_bins.
string[] dimension_names

# Q value of each chosen bin (autoregressive: Q(s, a^{1:i-1}, a^i)).
float32[] q_values

# True when the policy chose to end the episode.
bool terminate

# Wall time from image receipt to command publish, seconds.
float64 inference_time

# Identifier of the checkpoint that produced this step.
string model_id
""",
    EPISODE_EVENT: """\
# Episode life-cycle event, published by recorder_node.

uint8 STARTED=0
uint8 ENDED=1
uint8 LABELLED=2
uint8 ERROR=3

string OUTCOME_UNKNOWN=unknown
string OUTCOME_SUCCESS=success
string OUTCOME_FAILURE=failure
string OUTCOME_ABORTED=aborted

std_msgs/Header header
string episode_id
uint8 event
# One of OUTCOME_*: unknown until the episode is labelled.
string outcome
# 1.0 for success, 0.0 otherwise, given at the last step (Q-Transformer sparse reward).
float64 reward
string instruction
# Directory of the rosbag2 bag holding this episode.
string bag_path
# Time of the event (start, end or label).
builtin_interfaces/Time stamp
# Human-readable detail (reason an episode ended, error text).
string message
""",
}


def _constants(msgtype: str) -> dict[str, int | str]:
    """The constants (``uint8 STARTED=0``, ``string OUTCOME_SUCCESS=success``) of a definition."""
    out: dict[str, int | str] = {}
    for line in MSG_DEFINITIONS[msgtype].splitlines():
        line = line.split("#")[0].strip()
        if "=" in line:
            declaration, value = line.split("=", 1)
            ftype, name = declaration.split()
            out[name] = value.strip() if ftype == "string" else int(value)
    return out


# EpisodeEvent.event values, read from the definition above (never copied by hand), so the core
# agrees with the generated qt_ros.msg.EpisodeEvent without importing it.
_EVENT = _constants(EPISODE_EVENT)
EVENT_STARTED: int = _EVENT["STARTED"]
EVENT_ENDED: int = _EVENT["ENDED"]
EVENT_LABELLED: int = _EVENT["LABELLED"]
EVENT_ERROR: int = _EVENT["ERROR"]


def make_typestore() -> Typestore:
    """A new ``rosbags`` typestore with the ROS 2 standard messages and the qt_ros messages
    (callers may register more types in it)."""
    store = get_typestore(Stores.ROS2_KILTED)
    for name, text in MSG_DEFINITIONS.items():
        store.register(get_types_from_msg(text, name))
    return store


@functools.lru_cache(maxsize=1)
def default_typestore() -> Typestore:
    """A shared typestore like ``make_typestore()``, built once per process; do not modify it."""
    return make_typestore()
