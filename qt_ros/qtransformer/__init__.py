"""The Q-Transformer: action tokenizer, instruction and image encoders, model, learner, greedy
policy and checkpoints. Pure PyTorch; never imports ROS."""
