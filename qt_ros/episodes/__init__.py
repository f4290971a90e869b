"""Episodes on disk: interface definitions, rosbag2 (MCAP) bag reading and writing, the episode
catalog, the recorder core behind ``recorder_node`` and bag repair. Never imports ROS."""
