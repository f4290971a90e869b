"""On-robot control without ROS: the policy node's configuration, its control loop (tick, frame
choice, staleness, safety, hold, terminate, statistics) and the command safety filter."""
