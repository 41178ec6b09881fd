"""The continual-learning engine: task loop, training, evaluation, resumable checkpoints."""
