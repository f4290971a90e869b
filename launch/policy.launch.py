"""Run the Q-Transformer policy on a robot, recording every episode.

    ros2 launch qt_ros policy.launch.py checkpoint:=/path/to/checkpoint \\
        camera_topic:=/camera/color/image_raw arm_command_topic:=/servo_node/delta_twist_cmds

Starts the ``policy`` node (disabled until ``ros2 service call /policy/enable
std_srvs/srv/SetBool "{data: true}"``) and, unless ``record:=false``, the ``recorder`` node
writing one bag per episode into ``record_dir``. Everything not given here comes from the YAML
files in the package's ``config/`` (or the files passed as ``policy_params`` /
``recorder_params``). Both nodes use the package's Fast DDS shared-memory profile, which large
camera frames need.
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "checkpoint": ("", "checkpoint directory of the policy (qt-ros train output)"),
    "device": ("cpu", "torch device of the policy: cpu, cuda or cuda:N"),
    "control_rate": ("10.0", "control steps per second (Hz)"),
    "camera_topic": ("/camera/image_raw", "camera image topic (sensor_msgs/Image; with "
                     "image_transport:=compressed, <camera_topic>/compressed is used)"),
    "image_transport": ("raw", "raw or compressed"),
    "instruction_topic": ("/instruction", "std_msgs/String instruction (transient local)"),
    "arm_adapter": ("twist", "twist | joint_trajectory | float64_array"),
    "arm_command_topic": ("/servo_node/delta_twist_cmds", "topic of the arm commands"),
    "gripper_adapter": ("float64", "float64 | float64_array | joint_trajectory | none"),
    "gripper_command_topic": ("/gripper_command", "topic of the gripper commands"),
    "joint_states_topic": ("/joint_states", "sensor_msgs/JointState of the arm"),
    "record": ("true", "record episodes with the recorder node"),
    "record_dir": ("~/qt_ros_episodes", "directory of the episode bags and catalog"),
    "policy_params": ("", "policy parameter file (default: the package's config/policy.yaml)"),
    "recorder_params": ("", "recorder parameter file (default: config/recorder.yaml)"),
    "fastdds_profile": ("", "Fast DDS XML profile (default: config/fastdds_shm.xml)"),
}

# Message type of each adapter's commands, for the recorder's *_type parameters.
ARM_COMMAND_TYPES = {"twist": "geometry_msgs/msg/TwistStamped",
                     "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
                     "float64_array": "std_msgs/msg/Float64MultiArray"}
GRIPPER_COMMAND_TYPES = {"float64": "std_msgs/msg/Float64",
                         "float64_array": "std_msgs/msg/Float64MultiArray",
                         "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
                         "none": "std_msgs/msg/Float64"}


def generate_launch_description():
    share = FindPackageShare("qt_ros")
    defaults = {
        "policy_params": PathJoinSubstitution([share, "config", "policy.yaml"]),
        "recorder_params": PathJoinSubstitution([share, "config", "recorder.yaml"]),
        "fastdds_profile": PathJoinSubstitution([share, "config", "fastdds_shm.xml"]),
    }
    arguments = [DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                                       description=description)
                 for name, (default, description) in ARGUMENTS.items()]
    arg = LaunchConfiguration
    camera = arg("camera_topic")

    policy = Node(
        package="qt_ros",
        executable="policy_node",
        name="policy",
        output="screen",
        parameters=[
            arg("policy_params"),
            {
                "checkpoint": ParameterValue(arg("checkpoint"), value_type=str),
                "device": ParameterValue(arg("device"), value_type=str),
                "control_rate": ParameterValue(arg("control_rate"), value_type=float),
                "image_transport": ParameterValue(arg("image_transport"), value_type=str),
                "arm_adapter": ParameterValue(arg("arm_adapter"), value_type=str),
                "gripper_adapter": ParameterValue(arg("gripper_adapter"), value_type=str),
            },
        ],
        remappings=[
            ("image", camera),
            ("image/compressed", [camera, "/compressed"]),
            ("instruction", arg("instruction_topic")),
            ("arm_command", arg("arm_command_topic")),
            ("gripper_command", arg("gripper_command_topic")),
            ("joint_states", arg("joint_states_topic")),
        ],
    )
    # The recorder subscribes to the topics and types named by its parameters.
    compressed = ["'", arg("image_transport"), "' == 'compressed'"]
    recorder = Node(
        package="qt_ros",
        executable="recorder_node",
        name="recorder",
        output="screen",
        condition=IfCondition(arg("record")),
        parameters=[
            arg("recorder_params"),
            {
                "record_dir": ParameterValue(arg("record_dir"), value_type=str),
                "checkpoint_id": ParameterValue(arg("checkpoint"), value_type=str),
                "image_topic": ParameterValue(PythonExpression(
                    ["'", camera, "' + ('/compressed' if ", *compressed, " else '')"]),
                    value_type=str),
                "image_type": ParameterValue(PythonExpression(
                    ["'sensor_msgs/msg/CompressedImage' if ", *compressed,
                     " else 'sensor_msgs/msg/Image'"]), value_type=str),
                "instruction_topic": ParameterValue(arg("instruction_topic"), value_type=str),
                "arm_command_topic": ParameterValue(arg("arm_command_topic"), value_type=str),
                "arm_command_type": ParameterValue(PythonExpression(
                    [repr(ARM_COMMAND_TYPES), "['", arg("arm_adapter"), "']"]), value_type=str),
                "gripper_command_topic": ParameterValue(arg("gripper_command_topic"),
                                                        value_type=str),
                "gripper_command_type": ParameterValue(PythonExpression(
                    [repr(GRIPPER_COMMAND_TYPES), "['", arg("gripper_adapter"), "']"]),
                    value_type=str),
                "state_topic": ParameterValue(arg("joint_states_topic"), value_type=str),
            },
        ],
    )
    return LaunchDescription([
        *arguments,
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", arg("fastdds_profile")),
        policy,
        recorder,
    ])
