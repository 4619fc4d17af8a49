"""Classifiers behind evaluation metrics (LeNet for class accuracy and FD-LeNet)."""
