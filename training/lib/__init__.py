"""Helpers of training/train.py: config checks, strategies, builders,
checkpoints and monitoring. TensorFlow-only."""
