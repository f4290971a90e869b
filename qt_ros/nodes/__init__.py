"""The ROS 2 shell: thin rclpy nodes that convert messages to arrays and call ``qt_ros.core``."""
