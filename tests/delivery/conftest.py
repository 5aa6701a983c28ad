"""A local Hub with a writer (alice), a read-only token for her, and a second writer (bob)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hub_server import LocalHub

# Shaped like real tokens, so that the redaction patterns would catch them too.
WRITE_TOKEN = "hf_loraqAliceWriteToken0123456789"
READ_TOKEN = "hf_loraqAliceReadOnlyToken98765"
BOB_TOKEN = "hf_loraqBobWriteToken0123456789ab"


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    local = LocalHub().start()
    local.add_token(WRITE_TOKEN, "alice", write=True)
    local.add_token(READ_TOKEN, "alice")
    local.add_token(BOB_TOKEN, "bob", write=True)
    try:
        yield local
    finally:
        local.stop()
