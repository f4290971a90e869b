"""Small helpers shared by every package: safe file writes, config dataclasses as the one source
of every default (command-line options, ROS parameters and YAML files come from them), and the
C allocator's setting that training runs under."""
