"""The local Hub with every repository loraq provisions, and a token with access to Flux."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import hub_repos
from tests.hub_server import LocalHub

# Shaped like a real token, so that the redaction patterns would catch it too.
TOKEN = "hf_loraqTestTokenWithFluxAccess0123"
UNGRANTED_TOKEN = "hf_loraqTestTokenWithoutAccess98765"


@pytest.fixture
def local_hub() -> Iterator[LocalHub]:
    hub = LocalHub().start()
    for repo in hub_repos.all_repos():
        hub.add_repo(repo)
    hub.add_token(TOKEN, "alice", grant=(hub_repos.FLUX,))
    hub.add_token(UNGRANTED_TOKEN, "bob")
    try:
        yield hub
    finally:
        hub.stop()
