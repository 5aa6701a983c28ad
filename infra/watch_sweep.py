"""Remove the temporary queues of watches that died without cleaning up.

``loraq watch`` deletes its queue and subscription however it ends, except when it cannot run at
all: SIGKILL, a lost laptop, a crashed shell. Such a queue keeps receiving the job's events for
as long as it is subscribed, so every watch starts by sweeping the abandoned ones. A live watch
re-tags its queue (``loraq:alive``, epoch seconds) every ``ALIVE_EVERY_S`` while it runs; a
queue whose tag is older than ``ABANDONED_AFTER_S`` has no watcher left. A queue without the tag
(made by hand, or by an older loraq) is dated by its creation time instead, with a day's margin.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from botocore.exceptions import ClientError

WATCH_QUEUE_PREFIX = "loraq-watch-"
ALIVE_TAG = "loraq:alive"
ALIVE_EVERY_S = 600
ABANDONED_AFTER_S = 3600
_UNTAGGED_AFTER_S = 24 * 3600

_log = logging.getLogger(__name__)


async def sweep_abandoned_watches(
    sqs: Any, sns: Any, topic_arn: str, *, now: float | None = None
) -> list[str]:
    """Unsubscribe and delete abandoned watch queues; returns the URLs of those removed."""
    now = time.time() if now is None else now
    stale: dict[str, str] = {}  # queue ARN -> URL
    async for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=WATCH_QUEUE_PREFIX):
        for url in page.get("QueueUrls", []):
            dated = await _last_sign_of_life(sqs, url)
            if dated is not None and now - dated[1] >= dated[2]:
                stale[dated[0]] = url
    if not stale:
        return []
    async for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for subscription in page.get("Subscriptions", []):
            if subscription.get("Endpoint") in stale:
                with contextlib.suppress(ClientError):
                    await sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
    for url in stale.values():
        with contextlib.suppress(ClientError):  # another watch swept it first
            await sqs.delete_queue(QueueUrl=url)
        _log.info("removed the abandoned watch queue %s", url)
    return list(stale.values())


async def _last_sign_of_life(sqs: Any, url: str) -> tuple[str, float, float] | None:
    """(queue ARN, when its watcher last showed life, how long until abandoned), or None."""
    try:
        attributes = (
            await sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn", "CreatedTimestamp"]
            )
        )["Attributes"]
        tags = (await sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
    except ClientError:
        return None  # deleted meanwhile, or not ours to read
    try:
        return attributes["QueueArn"], float(tags[ALIVE_TAG]), ABANDONED_AFTER_S
    except (KeyError, ValueError):
        return attributes["QueueArn"], float(attributes["CreatedTimestamp"]), _UNTAGGED_AFTER_S
