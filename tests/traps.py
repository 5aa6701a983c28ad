"""A listener where no connection may arrive: a test proves a refused address was never reached."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def trap_listener(host: str = "127.0.0.3", port: int = 0) -> Iterator[socket.socket]:
    """Non-blocking, so ``accept()`` raising ``BlockingIOError`` means nothing connected."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, port))
    listener.listen(8)
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()
