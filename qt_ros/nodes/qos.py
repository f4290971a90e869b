"""Every QoS profile of the qt_ros nodes, in one place: a publisher and its subscribers match
because they take their profile from here. Sensor streams are best effort (only the newest sample
matters, a late one is worse than none); commands, steps and events are reliable; the instruction
and episode events are "latched" (transient local) so a node started later still gets them."""

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def _profile(depth: int, reliable: bool, latched: bool = False) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


# Camera and joint-state publishers: the sensor-data QoS of camera drivers and ros2_control.
SENSOR_QOS = _profile(5, reliable=False)
# Subscribers that act on the newest sample only (the policy node: frames, joint states, poses).
LATEST_SENSOR_QOS = _profile(1, reliable=False)
# Arm and gripper commands: only the newest matters, but it must arrive.
COMMAND_QOS = _profile(1, reliable=True)
# The newest state of a node another node acts on (sim_robot/state for the demonstrator).
LATEST_STATE_QOS = COMMAND_QOS
# Policy steps: every step is data for the recorder.
POLICY_STEP_QOS = _profile(10, reliable=True)
# Low-rate reliable topics (task_success, sim_robot/state publishers).
RELIABLE_QOS = _profile(10, reliable=True)
# episode_events: late joiners (a policy node started mid-episode) still get the last events.
EPISODE_EVENTS_QOS = _profile(10, reliable=True, latched=True)
# instruction: a node started after the instruction was published still gets it.
INSTRUCTION_QOS = _profile(1, reliable=True, latched=True)

# The recorder subscribes to any topic with one of these (parameter extra_topics names them).
RECORDER_QOS_NAMES = ("sensor_data", "reliable", "latched")


def recorder_qos(name: str, sensor_depth: int) -> QoSProfile:
    """The recorder's subscription profile ``name``: deep queues so nothing waits on the disk."""
    return {"sensor_data": _profile(sensor_depth, reliable=False),
            "reliable": _profile(50, reliable=True),
            "latched": _profile(10, reliable=True, latched=True)}[name]
