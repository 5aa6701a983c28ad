"""The built-in `tiny` model: a small DiT whose LoRA trains with DeepSpeed on the CPU.

`train.py` honours diffusion-pipe's trainer contract (CLI, TOML keys, run-dir layout, log lines,
control files, resume), so loraq's launcher, log parser, resume logic and publisher run against
it unchanged without a GPU.
"""
