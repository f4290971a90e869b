"""The ROS-free core: action tokenizer, model, learner, data, training and evaluation."""
