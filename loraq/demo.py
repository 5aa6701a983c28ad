"""``loraq demo``: one real job through the embedded stack, printed as it happens.

Starts moto (SQS + DLQ, SNS with a watching SQS subscription, S3), uploads a generated
precaptioned dataset, sends the seed's request body for the built-in ``tiny`` model, runs a
worker in this process, prints every event from the topic, and finally the result.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session

from contracts.events import CloudEvent
from infra.local_stack import LocalStack, start_local_stack
from loraq.app import run_worker
from loraq.sample_data import image_dataset_zip

DATASET_KEY = "datasets/shapes.zip"


def demo_request(
    images_url: str, stack: LocalStack, *, job_id: str, epochs: int = 10, **training: Any
) -> dict[str, Any]:
    """The seed's request body for a small ``tiny`` job that delivers to the stack's S3."""
    return {
        "input": {
            "job_id": job_id,
            "model_type": "tiny",
            "dataset": {
                "type": "precaptioned",
                "images_url": images_url,
                "trigger_word": "lqshape",
            },
            "training": {
                "epochs": epochs,
                "learning_rate": 2e-3,
                "gradient_accumulation_steps": 1,
                "warmup_steps": 5,
                "lora_rank": 8,
                "save_every_n_epochs": 5,
                **training,
            },
            "output": {
                "method": "s3",
                "s3": {
                    "endpoint_url": stack.endpoint,
                    "bucket": stack.bucket,
                    "region": "us-east-1",
                    "access_key": "testing",
                    "secret_key": "testing",
                    "key_prefix": "loras",
                },
            },
        }
    }


def upload_dataset(stack: LocalStack, count: int = 8) -> str:
    s3 = stack.client("s3")
    s3.put_object(Bucket=stack.bucket, Key=DATASET_KEY, Body=image_dataset_zip(count))
    url: str = s3.generate_presigned_url(
        "get_object", Params={"Bucket": stack.bucket, "Key": DATASET_KEY}, ExpiresIn=3600
    )
    return url


def describe(event: CloudEvent) -> str:
    data, kind = event.data, event.type.value.removeprefix("loraq.")
    if kind == "job.progress":
        return (
            f"step {data['step']}/{data.get('total_steps')}  epoch {data.get('epoch')}  "
            f"loss {data.get('loss'):.4f}  {data.get('percent')}%  eta {data.get('eta_s')}s"
        )
    if kind.startswith("stage."):
        return f"{data['stage']} {kind.split('.')[1]}"
    if kind == "job.checkpointed":
        return f"checkpoint {data['tag']} (step {data['step']})"
    if kind == "job.failed":
        return f"FAILED {data['code']} field={data.get('field')}: {data['message']}"
    return kind


async def watch_events(stack: LocalStack, job_id: str, sink: list[CloudEvent]) -> CloudEvent:
    """Print the topic's events for ``job_id`` until a terminal one arrives; return it."""
    async with get_session().create_client("sqs") as sqs:
        while True:
            reply = await sqs.receive_message(
                QueueUrl=stack.watch_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in reply.get("Messages", []):
                await sqs.delete_message(
                    QueueUrl=stack.watch_queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
                event = CloudEvent.model_validate_json(message["Body"])
                if event.subject != job_id:
                    continue
                sink.append(event)
                print(
                    f"  {event.time:%H:%M:%S}  {event.type.value:<24} {describe(event)}", flush=True
                )
                if event.type.is_terminal:
                    return event


async def run_demo(volume: Path, epochs: int = 10) -> int:
    stack = start_local_stack()
    os.environ.update(stack.env())
    try:
        job_id = f"demo-{int(time.time())}"
        request = demo_request(upload_dataset(stack), stack, job_id=job_id, epochs=epochs)
        stack.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(request))
        print(f"loraq demo: sent job {job_id} to {stack.queue_url}\n", flush=True)
        settings = stack.worker_settings(volume, progress_interval_s=1.0)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, stop=stop))
        events: list[CloudEvent] = []
        terminal = await watch_events(stack, job_id, events)
        stop.set()
        await worker
        return _report(terminal, volume / "jobs" / job_id)
    finally:
        stack.stop()


def _report(terminal: CloudEvent, job_dir: Path) -> int:
    if terminal.type.value != "loraq.job.succeeded":
        print("\nThe job failed.")
        return 1
    output = terminal.data["output"]
    local = Path(output["network_volume_path"])
    with urllib.request.urlopen(output["safetensors_url"]) as reply:  # noqa: S310 - local stack
        size = len(reply.read())
    print("\nResult:")
    print(json.dumps(terminal.data, indent=2))
    print(f"\nLoRA on the volume: {local}")
    print(f"Download URL (checked, {size} bytes): {output['safetensors_url']}")
    print("  (served by the demo's own local S3, which stops with the demo)")
    print(f"Job directory: {job_dir}")
    return 0


def main(volume: str, epochs: int) -> int:
    return asyncio.run(run_demo(Path(volume).resolve(), epochs))
