"""The runner: settings and their command lines, the run pipeline, the training loop, checkpoints,
multi-process training, sweeps and plots.  It imports the library below it, never a task family."""
