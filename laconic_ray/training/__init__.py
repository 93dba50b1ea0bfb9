"""Training components (pure PyTorch): batching, objectives per phase, schedules, parallel wrapping,
checkpoints, export and memory planning. distributed/train.py runs them under Ray Train."""
