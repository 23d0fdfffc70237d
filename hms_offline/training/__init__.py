"""The training side, which the kernel never loads: config, labels, folds, loader,
augmentations, schedule, the fold loop and its checkpoints, the run's summary and the
comparison of runs."""
