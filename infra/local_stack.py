"""The embedded default: SQS, SNS and S3 served by moto on 127.0.0.1 over real HTTP.

Used by ``loraq stack``, ``loraq demo`` and the tests. The worker cannot tell it from AWS: it
reaches it through the standard ``AWS_ENDPOINT_URL`` setting and speaks the same protocol.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from infra.settings import Settings

REGION = "us-east-1"
QUEUE_NAME = "loraq-jobs"
DLQ_NAME = "loraq-jobs-dlq"
TOPIC_NAME = "loraq-events"
WATCH_QUEUE_NAME = "loraq-events-watch"
BUCKET_NAME = "loraq-local"
MAX_RECEIVE_COUNT = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalStack:
    endpoint: str
    queue_url: str
    dlq_url: str
    topic_arn: str
    watch_queue_url: str
    bucket: str
    _server: Any = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """What a worker or a client needs to reach this stack (``loraq stack`` prints it)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "LORAQ_QUEUE_URL": self.queue_url,
            "LORAQ_DLQ_URL": self.dlq_url,
            "LORAQ_TOPIC_ARN": self.topic_arn,
            "LORAQ_WATCH_QUEUE_URL": self.watch_queue_url,
            "LORAQ_BUCKET": self.bucket,
            # Private addresses are refused for dataset URLs; only this stack's own is allowed.
            "LORAQ_FETCH_ALLOW": json.dumps(["127.0.0.1"]),
            # The stack's one bucket is shared on purpose: s3:// demo datasets and keyless
            # output.s3 may use it with the worker's role (docs/request.md, s3:// datasets).
            "LORAQ_DATASET_BUCKETS": json.dumps([self.bucket]),
            "LORAQ_OUTPUT_BUCKETS": json.dumps([self.bucket]),
        }

    def worker_settings(self, volume: Path, **overrides: Any) -> Settings:
        """Settings for a worker run in this process against this stack (demo, tests, benches).

        Polls briefly so that a stop is quick, and may fetch datasets from the stack's own
        S3 on 127.0.0.1 and nothing else private.
        """
        values: dict[str, Any] = {
            "queue_url": self.queue_url,
            "topic_arn": self.topic_arn,
            "volume": volume,
            "fetch_allow": ["127.0.0.1"],
            "dataset_buckets": [self.bucket],
            "output_buckets": [self.bucket],
            "wait_time_seconds": 1,
        }
        values.update(overrides)
        return Settings(**values)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def start_local_stack(port: int | None = None) -> LocalStack:
    """Start moto on 127.0.0.1 and create the queue, its DLQ, the topic, a watcher and a bucket."""
    # werkzeug logs every request at INFO: a heartbeat every few seconds drowns the output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    stack = LocalStack(endpoint, "", "", "", "", BUCKET_NAME, server)
    try:
        # moto keeps its state per process, not per server: start from nothing, so a second
        # stack in the same process (the tests) never sees the first one's messages.
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - our server, 127.0.0.1
        _create_resources(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _create_resources(stack: LocalStack) -> None:
    sqs, sns, s3 = stack.client("sqs"), stack.client("sns"), stack.client("s3")
    stack.dlq_url = sqs.create_queue(QueueName=DLQ_NAME)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=stack.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
    stack.queue_url = sqs.create_queue(
        QueueName=QUEUE_NAME,
        Attributes={"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": "120"},
    )["QueueUrl"]
    stack.topic_arn = sns.create_topic(Name=TOPIC_NAME)["TopicArn"]
    stack.watch_queue_url = subscribe_queue(stack, WATCH_QUEUE_NAME)
    s3.create_bucket(Bucket=stack.bucket)


def subscribe_queue(
    stack: LocalStack, queue_name: str, filter_policy: dict[str, Any] | None = None
) -> str:
    """An SQS queue that receives the topic's events raw, with attributes, optionally filtered."""
    sqs, sns = stack.client("sqs"), stack.client("sns")
    url: str = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    sns.subscribe(TopicArn=stack.topic_arn, Protocol="sqs", Endpoint=arn, Attributes=attributes)
    return url
