"""Training: optimizer, schedule, checkpoints, metrics and the loop that ties them together."""
