"""Training: the one loop for every stage, its configuration, schedules and checkpoints."""
