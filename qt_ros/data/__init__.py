"""Bags to training data: topic mappings, image conversion, per-episode conversion, and the
dataset on disk (reader, writer, statistics, returns) with its PyTorch view. Never imports ROS."""
