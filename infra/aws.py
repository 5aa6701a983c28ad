"""One aiobotocore session and its long-lived clients, opened and closed together.

Clients are created once per worker (not per call): each holds a connection pool, and
re-creating them per message would add a TLS handshake to every heartbeat.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

# Standard retry mode backs off on throttling and 5xx inside botocore itself.
_CLIENT_CONFIG = AioConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10)


class AwsClients:
    """``async with AwsClients() as aws: aws.sqs / aws.sns / aws.s3``."""

    def __init__(self, region: str | None = None) -> None:
        self._region = region
        self._stack = AsyncExitStack()
        self.sqs: Any = None
        self.sns: Any = None
        self.s3: Any = None

    async def __aenter__(self) -> AwsClients:
        session = get_session()
        kwargs: dict[str, Any] = {"config": _CLIENT_CONFIG}
        if self._region:
            kwargs["region_name"] = self._region
        self.sqs = await self._stack.enter_async_context(session.create_client("sqs", **kwargs))
        self.sns = await self._stack.enter_async_context(session.create_client("sns", **kwargs))
        self.s3 = await self._stack.enter_async_context(session.create_client("s3", **kwargs))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
