"""The recorder's settings: every default and its description, once.

``RecorderConfig`` is what :class:`qt_ros.episodes.recorder.EpisodeRecorder` needs;
``RecorderNodeConfig`` adds what the ``recorder`` node subscribes to. The node declares one ROS
parameter per field of ``RecorderNodeConfig`` (``qt_ros.common.settings.parameter_table``) and
``config/recorder.yaml`` is checked against it by test/test_config_files.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qt_ros.common.settings import setting


@dataclass(frozen=True)
class RecorderConfig:
    """How episodes are recorded: where, into what, and when one ends on its own."""

    record_dir: Path | str = setting(
        "~/qt_ros_episodes", "directory of the episode bags and catalog.json ('~' is expanded)")
    robot: str = setting("", "robot name, written into each episode's metadata and id")
    checkpoint_id: str = setting("", "policy checkpoint; empty takes PolicyStep.model_id")
    source: str = setting("autonomous", "who acts in the episodes",
                          choices=("autonomous", "demonstration"))
    compression: str = setting("none", "MCAP chunk compression", choices=("none", "zstd"))
    flush_period: float = setting(
        1.0, "s between flushes of the open chunk (bounds what a crash loses)")
    fsync: bool = setting(False, "fsync after each flush (power-loss safety)")
    min_free_space_mb: float = setting(
        1024.0, "below this free space no episode starts and a running one ends (aborted) with "
                "an error event")
    max_episode_duration: float = setting(
        300.0, "s; a longer episode ends with timeout_outcome (0: never)")
    timeout_outcome: str = setting("failure", "outcome of a timed-out episode (failure | "
                                              "unknown | aborted)")
    max_queue_mb: float = setting(
        512.0, "MB of messages waiting for the disk before messages are dropped")
    # Not a node parameter: the node passes its namespace's episode_events topic.
    events_topic: str = setting("/episode_events", "topic of the episode events in the bag")


# Node fields that are not ROS parameters of the recorder node.
NOT_PARAMETERS = ("events_topic",)


@dataclass(frozen=True)
class RecorderNodeConfig(RecorderConfig):
    """The ``recorder`` node's parameters: the recorder's, plus what it subscribes to.

    A ``<role>_topic`` that is empty is not recorded; ``<role>_type`` is the message type
    (the instruction and policy step types are fixed).
    """

    end_on_terminate: bool = setting(
        True, "end the episode on PolicyStep.terminate (outcome unknown)")
    end_grace: float = setting(
        0.1, "s the bag stays open when an episode ends by terminate or end_episode, so that "
             "messages of the last tick still on their way (the state published with the last "
             "frame) are recorded; 0: close at once")
    sensor_qos_depth: int = setting(
        10, "queue depth of the best-effort (sensor data) subscriptions")
    image_topic: str = setting("image", "camera frames; empty: not recorded")
    image_type: str = setting("sensor_msgs/msg/Image",
                              "message type of image_topic, e.g. sensor_msgs/msg/CompressedImage")
    instruction_topic: str = setting(
        "instruction", "the instruction (std_msgs/msg/String); empty: not recorded")
    arm_command_topic: str = setting("arm_command", "arm commands; empty: not recorded")
    arm_command_type: str = setting(
        "geometry_msgs/msg/TwistStamped",
        "message type of arm_command_topic, e.g. trajectory_msgs/msg/JointTrajectory")
    gripper_command_topic: str = setting("gripper_command",
                                         "gripper commands; empty: not recorded")
    gripper_command_type: str = setting(
        "std_msgs/msg/Float64",
        "message type of gripper_command_topic, e.g. std_msgs/msg/Float64MultiArray")
    policy_step_topic: str = setting(
        "policy_step", "the policy's steps (qt_ros/msg/PolicyStep); empty: not recorded")
    state_topic: str = setting("joint_states", "robot state; empty: not recorded")
    state_type: str = setting("sensor_msgs/msg/JointState", "message type of state_topic")
    extra_topics: tuple[str, ...] = setting(
        (), "more topics to record, each 'TOPIC:TYPE[:QOS]', QOS sensor_data | reliable | "
            "latched")
