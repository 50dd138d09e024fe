"""Training: the step, its setup, handlers, checkpoints, tracking, mixing, optimizers, memory and runs."""
