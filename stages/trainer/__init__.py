"""Running diffusion-pipe (or the built-in ``tiny`` trainer, which keeps its contract)."""
