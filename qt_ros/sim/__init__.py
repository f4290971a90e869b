"""The embedded simulated robot (MuJoCo arm, block, camera; success detector) and the scripted
demonstrator. Never imports ROS: ``qt_ros.nodes`` wraps them in ROS 2 nodes."""
