"""Queues of killed watches are swept by the next watch; a live watch's queue never is."""

from __future__ import annotations

import asyncio
import os
import time

from infra.aws import AwsClients
from infra.local_stack import LocalStack
from infra.topic_watch import TopicWatch
from infra.watch_sweep import ALIVE_TAG, sweep_abandoned_watches
from tests.cli.conftest import watch_queues, watch_subscriptions
from tests.cli.pty_process import PtyProcess, loraq_argv

HOUR = 3600.0


def _leftover(stack: LocalStack, name: str, alive_at: float | None) -> str:
    """A watch queue as a killed `loraq watch` leaves it: subscribed, tagged or not."""
    sqs, sns = stack.client("sqs"), stack.client("sns")
    tags = {} if alive_at is None else {ALIVE_TAG: str(int(alive_at))}
    url = str(sqs.create_queue(QueueName=f"loraq-watch-{name}", tags=tags)["QueueUrl"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=stack.topic_arn, Protocol="sqs", Endpoint=arn)
    return url


def _subscribed_queue_names(stack: LocalStack) -> set[str]:
    return {s["Endpoint"].rsplit(":", 1)[1] for s in watch_subscriptions(stack)}


async def _sweep(stack: LocalStack, now: float) -> list[str]:
    async with AwsClients() as aws:
        return await sweep_abandoned_watches(aws.sqs, aws.sns, stack.topic_arn, now=now)


async def test_only_queues_whose_watcher_is_gone_are_removed_with_their_subscriptions(
    stack: LocalStack,
) -> None:
    """GIVEN a queue last marked alive 2 h ago, one marked 5 min ago and an untagged one made
    now, each subscribed to the topic WHEN a watch sweeps THEN only the first is removed, and its
    subscription with it; a day later the untagged one and the silent one go too."""
    now = time.time()
    stale = _leftover(stack, "stale", now - 2 * HOUR)
    _leftover(stack, "live", now - 300)
    _leftover(stack, "untagged", None)

    assert await _sweep(stack, now) == [stale]
    assert sorted(url.rsplit("/", 1)[1] for url in watch_queues(stack)) == [
        "loraq-watch-live",
        "loraq-watch-untagged",
    ]
    assert _subscribed_queue_names(stack) == {"loraq-watch-live", "loraq-watch-untagged"}

    assert len(await _sweep(stack, now + 25 * HOUR)) == 2
    assert watch_queues(stack) == [] and watch_subscriptions(stack) == []


async def test_a_live_watch_marks_its_queue_alive_as_time_passes(stack: LocalStack) -> None:
    """GIVEN an open watch WHEN it keeps receiving THEN its queue's alive tag moves forward
    once ten minutes have passed (not on every poll), so no sweep takes a live watch's queue."""
    clock = [1_000.0]
    sqs = stack.client("sqs")
    async with (
        AwsClients() as aws,
        TopicWatch(aws.sqs, aws.sns, stack.topic_arn, "job-1", clock=lambda: clock[0]) as watch,
    ):
        assert watch.queue_url is not None

        def alive_tag() -> str:
            return str(sqs.list_queue_tags(QueueUrl=watch.queue_url)["Tags"][ALIVE_TAG])

        assert alive_tag() == "1000"
        clock[0] += 599
        await watch.receive(0)
        assert alive_tag() == "1000"
        clock[0] += 1
        await watch.receive(0)
        assert alive_tag() == "1600"
        assert await _sweep(stack, now=clock[0] + 600) == []


async def test_loraq_watch_sweeps_an_abandoned_queue_before_it_subscribes(
    stack: LocalStack, watches: list[PtyProcess]
) -> None:
    """GIVEN the queue of a watch killed hours ago WHEN the user starts `loraq watch` THEN it
    says it removed that queue, and only its own queue remains subscribed."""
    stale = _leftover(stack, "killed", time.time() - 3 * HOUR)
    watch = PtyProcess(loraq_argv("watch", "job-9"), dict(os.environ))
    watches.append(watch)
    await asyncio.to_thread(watch.wait_for, "watching job job-9", 60)
    assert "removed 1 abandoned watch queue(s)" in watch.text and stale in watch.text
    assert stale not in watch_queues(stack) and len(watch_queues(stack)) == 1
    assert "loraq-watch-killed" not in _subscribed_queue_names(stack)
