"""loraq's composition root: the CLI, and the wiring of settings, adapters and the worker."""
