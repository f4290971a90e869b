"""The simulated robot, with the policy, the recorder and (optionally) the scripted demonstrator.

    ros2 launch qt_ros sim.launch.py checkpoint:=/path/to/checkpoint
    ros2 launch qt_ros sim.launch.py demonstrator:=true record_dir:=~/demos

Starts ``sim_robot`` (MuJoCo, offscreen: camera on ``image``, ``joint_states``,
``task_success``; reset with ``ros2 service call /sim_robot/reset std_srvs/srv/Trigger``),
the ``policy`` node when a checkpoint is given (disabled until ``ros2 service call
/policy/enable std_srvs/srv/SetBool "{data: true}"``), the ``recorder`` (one bag per episode:
``/recorder/start_episode``), and with ``demonstrator:=true`` the scripted ``demonstrator``
(``/demonstrator/enable``), whose episodes are recorded as demonstrations. Episodes that end by
the policy's or demonstrator's terminate are labelled success/failure by the simulator's success
detector. Parameters come from ``config/policy.yaml`` and ``config/recorder.yaml``, then
``config/sim.yaml`` (or ``sim_params``), then the launch arguments. ``config/sim.yaml`` runs the
simulator and the policy in lockstep (one control period per decision: an episode depends on
the seed and the policy, not on the machine's load); a ``sim_params`` file with ``lockstep:
false`` for both makes the simulator behave like a robot that does not wait.
``python -m qt_ros.demo`` runs the whole loop (demonstrations, conversion, training, policy
episodes) without launch.
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "task": ("lift", "lift (pick up the red block) or place (put it on the green pad)"),
    "seed": ("0", "seed of the first episode's scene (episode k: seed + k)"),
    "control_rate": ("10.0", "control steps per second (Hz) of the sim, policy, demonstrator"),
    "checkpoint": ("", "checkpoint directory of the policy (qt-ros train output); empty: no "
                   "policy node"),
    "device": ("cpu", "torch device of the policy: cpu, cuda or cuda:N"),
    "demonstrator": ("false", "also start the scripted demonstrator (recorded episodes are "
                     "then demonstrations)"),
    "record": ("true", "record episodes with the recorder node"),
    "record_dir": ("~/qt_ros_episodes/sim", "directory of the episode bags and catalog"),
    "sim_params": ("", "parameter file of the sim set-up (default: config/sim.yaml)"),
    "policy_params": ("", "policy parameter file (default: config/policy.yaml)"),
    "recorder_params": ("", "recorder parameter file (default: config/recorder.yaml)"),
    "fastdds_profile": ("", "Fast DDS XML profile (default: config/fastdds_shm.xml)"),
}


def generate_launch_description():
    share = FindPackageShare("qt_ros")
    defaults = {
        "sim_params": PathJoinSubstitution([share, "config", "sim.yaml"]),
        "policy_params": PathJoinSubstitution([share, "config", "policy.yaml"]),
        "recorder_params": PathJoinSubstitution([share, "config", "recorder.yaml"]),
        "fastdds_profile": PathJoinSubstitution([share, "config", "fastdds_shm.xml"]),
    }
    arguments = [DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                                       description=description)
                 for name, (default, description) in ARGUMENTS.items()]
    arg = LaunchConfiguration
    task = ParameterValue(arg("task"), value_type=str)
    rate = ParameterValue(arg("control_rate"), value_type=float)

    sim_robot = Node(
        package="qt_ros",
        executable="sim_robot_node",
        name="sim_robot",
        output="screen",
        parameters=[
            arg("sim_params"),
            {"task": task, "seed": ParameterValue(arg("seed"), value_type=int),
             "control_rate": rate},
        ],
    )
    demonstrator = Node(
        package="qt_ros",
        executable="demonstrator_node",
        name="demonstrator",
        output="screen",
        condition=IfCondition(arg("demonstrator")),
        parameters=[arg("sim_params"), {"task": task, "control_rate": rate}],
    )
    policy = Node(
        package="qt_ros",
        executable="policy_node",
        name="policy",
        output="screen",
        condition=IfCondition(PythonExpression(["'", arg("checkpoint"), "' != ''"])),
        parameters=[
            arg("policy_params"),
            arg("sim_params"),
            {
                "checkpoint": ParameterValue(arg("checkpoint"), value_type=str),
                "device": ParameterValue(arg("device"), value_type=str),
                "control_rate": rate,
            },
        ],
    )
    recorder = Node(
        package="qt_ros",
        executable="recorder_node",
        name="recorder",
        output="screen",
        condition=IfCondition(arg("record")),
        parameters=[
            arg("recorder_params"),
            arg("sim_params"),
            {
                "record_dir": ParameterValue(arg("record_dir"), value_type=str),
                "checkpoint_id": ParameterValue(arg("checkpoint"), value_type=str),
                "source": ParameterValue(PythonExpression(
                    ["'demonstration' if '", arg("demonstrator"), "'.lower() == 'true' "
                     "else 'autonomous'"]), value_type=str),
            },
        ],
    )
    return LaunchDescription([
        *arguments,
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", arg("fastdds_profile")),
        sim_robot,
        demonstrator,
        policy,
        recorder,
    ])
