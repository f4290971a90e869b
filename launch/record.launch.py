"""Record episodes without a policy, e.g. teleoperated demonstrations.

    ros2 launch qt_ros record.launch.py record_dir:=~/demos camera_topic:=/camera/color/image_raw

Starts only the ``recorder`` node; start and end each episode with its services
(``/recorder/start_episode``, ``/recorder/end_episode``) and label it with
``/recorder/label_episode``. Parameters not given here come from the package's
``config/recorder.yaml`` (or ``recorder_params``).
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "record_dir": ("~/qt_ros_episodes", "directory of the episode bags and catalog"),
    "camera_topic": ("/camera/image_raw", "camera image topic (sensor_msgs/Image; with "
                     "image_transport:=compressed, <camera_topic>/compressed is recorded)"),
    "image_transport": ("raw", "raw or compressed"),
    "instruction_topic": ("/instruction", "std_msgs/String instruction (transient local)"),
    "arm_command_topic": ("/servo_node/delta_twist_cmds", "topic of the teleoperation commands"),
    "arm_command_type": ("geometry_msgs/msg/TwistStamped", "message type of the arm commands"),
    "gripper_command_topic": ("/gripper_command", "topic of the gripper commands"),
    "gripper_command_type": ("std_msgs/msg/Float64", "message type of the gripper commands"),
    "joint_states_topic": ("/joint_states", "sensor_msgs/JointState of the arm"),
    "robot": ("", "robot name written into each episode's metadata"),
    "recorder_params": ("", "recorder parameter file (default: config/recorder.yaml)"),
    "fastdds_profile": ("", "Fast DDS XML profile (default: config/fastdds_shm.xml)"),
}

def generate_launch_description():
    share = FindPackageShare("qt_ros")
    defaults = {
        "recorder_params": PathJoinSubstitution([share, "config", "recorder.yaml"]),
        "fastdds_profile": PathJoinSubstitution([share, "config", "fastdds_shm.xml"]),
    }
    arguments = [DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                                       description=description)
                 for name, (default, description) in ARGUMENTS.items()]
    arg = LaunchConfiguration
    camera = arg("camera_topic")
    compressed = ["'", arg("image_transport"), "' == 'compressed'"]
    recorder = Node(
        package="qt_ros",
        executable="recorder_node",
        name="recorder",
        output="screen",
        parameters=[
            arg("recorder_params"),
            {
                "record_dir": ParameterValue(arg("record_dir"), value_type=str),
                "robot": ParameterValue(arg("robot"), value_type=str),
                "source": "demonstration",
                "image_topic": ParameterValue(PythonExpression(
                    ["'", camera, "' + ('/compressed' if ", *compressed, " else '')"]),
                    value_type=str),
                "image_type": ParameterValue(PythonExpression(
                    ["'sensor_msgs/msg/CompressedImage' if ", *compressed,
                     " else 'sensor_msgs/msg/Image'"]), value_type=str),
                "instruction_topic": ParameterValue(arg("instruction_topic"), value_type=str),
                "arm_command_topic": ParameterValue(arg("arm_command_topic"), value_type=str),
                "arm_command_type": ParameterValue(arg("arm_command_type"), value_type=str),
                "gripper_command_topic": ParameterValue(arg("gripper_command_topic"),
                                                        value_type=str),
                "gripper_command_type": ParameterValue(arg("gripper_command_type"),
                                                       value_type=str),
                "state_topic": ParameterValue(arg("joint_states_topic"), value_type=str),
            },
        ],
    )
    return LaunchDescription([
        *arguments,
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", arg("fastdds_profile")),
        recorder,
    ])
