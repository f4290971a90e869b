"""Closed-loop evaluation without ROS: a checkpoint (or the scripted demonstrator) acting on the
simulated robot through the policy node's own control loop, on unseen scene seeds, with the
success rate's confidence interval, a plot and GIFs of episodes (``qt-ros eval``)."""
