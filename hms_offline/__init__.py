"""Offline training and Kaggle-kernel inference for HMS - Harmful Brain Activity Classification."""

__version__ = "0.1.0"
