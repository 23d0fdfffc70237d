"""`python -m hms_offline bench`: what each side of the product costs on this machine, every
figure beside the route it is compared with, measured side by side in one run.

One module per part: conversion.py (parquet -> .npy against the starter's route and the floor
read), kernel.py (predict_competition against the pure forward pass of its engine plus the
floor read, and a naive ensemble), memory.py (peak RSS of the kernel's process tree at two
test-set sizes), training.py (the input pipeline against today's per-window path, and a
training step of each architecture); measure.py holds the timing, the ratios, the machine and
the report; run.py runs the parts and writes the JSON.
"""
