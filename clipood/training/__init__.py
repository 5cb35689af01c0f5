"""Training: the `TrainingTask` (`task`), the Accelerate loop (`loop`), checkpoints (`checkpoints`) and the
built-in tracker (`trackers`)."""
