"""The HTTP library huggingface_hub speaks: ``httpx2`` from huggingface_hub 2, ``httpx`` before.

The GPU image must keep huggingface-hub 1.x, because diffusion-pipe's transformers and diffusers
pins require ``huggingface-hub<2.0`` (infra/deploy/diffusion-pipe-constraints.txt), while the CPU
test environment resolves 2.x. loraq only catches the library's errors and reads its responses,
so it names whichever one is installed instead of importing either directly.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import TYPE_CHECKING


def _hub_http() -> ModuleType:
    name = "httpx2" if importlib.util.find_spec("httpx2") is not None else "httpx"
    return importlib.import_module(name)


http = _hub_http()
HTTPError: type[Exception] = http.HTTPError

if TYPE_CHECKING:
    from httpx2 import Response as Response
else:
    Response = http.Response
