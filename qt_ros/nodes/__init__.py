"""The ROS 2 shell: thin rclpy nodes that convert messages to arrays and call the core."""
