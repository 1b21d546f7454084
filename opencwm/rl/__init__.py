"""Reinforcement learning from verifiable rewards (CWM post-training): the objective, environments scored by
the evaluation suite's graders, rollouts, and runs on the one training loop."""
