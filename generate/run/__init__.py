"""The run: settings, Hydra config, checks, sources, records, checkpoints, the runner and its status."""
