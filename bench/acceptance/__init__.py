"""The GPU acceptance run's parts (``bench/gpu_acceptance.py`` is the command).

Modules that import torch, diffusers, transformers or ComfyUI do it inside functions: the CPU
tests import all of them on a machine that has none of those but torch.
"""
