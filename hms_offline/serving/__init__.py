"""What the kernel runs: fold-ensemble inference, its report, submission.csv.

Imports the core, `features/` and `models/`, never `training/` (tests/test_layout.py).
"""
