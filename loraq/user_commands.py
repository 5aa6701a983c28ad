"""The commands a user of the service runs: ``submit``, ``watch``, ``status``.

They reach AWS like the worker does (the standard AWS variables and credential chain, so the
local stack's ``AWS_ENDPOINT_URL`` works too) and take the queue and topic from the same
``LORAQ_QUEUE_URL`` / ``LORAQ_TOPIC_ARN`` that ``loraq stack`` prints. With ``--repo``, ``watch``
and ``status`` read the job's ``UPDATES/`` on the Hub instead and need only a Hub token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _submit(args: argparse.Namespace) -> int:
    from loraq.submit import submit_command

    return submit_command(Path(args.job), args.queue_url)


def _watch(args: argparse.Namespace) -> int:
    if args.repo is not None:
        return _watch_hub(args)
    if args.interval is not None:
        print("loraq watch: --interval goes with --repo", file=sys.stderr)
        return 2
    from loraq.watch import watch_command

    volume = Path(args.volume) if args.volume else None
    return watch_command(args.job_id, args.topic_arn, volume)


def _watch_hub(args: argparse.Namespace) -> int:
    from loraq.hub_watch import DEFAULT_INTERVAL_S, hub_watch_command

    if args.volume:
        print("loraq watch: --volume and --repo are exclusive", file=sys.stderr)
        return 2
    return hub_watch_command(
        args.job_id,
        args.repo,
        endpoint=args.hf_endpoint,
        token=os.environ.get("HF_TOKEN") or None,
        interval_s=args.interval if args.interval is not None else DEFAULT_INTERVAL_S,
    )


def _status(args: argparse.Namespace) -> int:
    from loraq.status_command import status_command

    return status_command(
        args.job_id,
        volume=Path(args.volume) if args.volume else None,
        repo=args.repo,
        endpoint=args.hf_endpoint,
        token=os.environ.get("HF_TOKEN") or None,
        as_json=args.json,
    )


def add_user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = sub.add_parser(
        "submit", help="check a job request and send it to the queue; prints the job id"
    )
    submit.add_argument("job", help='the job request: a JSON file {"input": {...}}')
    submit.add_argument(
        "--queue-url",
        default=os.environ.get("LORAQ_QUEUE_URL"),
        help="the jobs queue (default: $LORAQ_QUEUE_URL)",
    )
    submit.set_defaults(func=_submit)

    watch = sub.add_parser(
        "watch", help="follow a job live until it ends (exit 0 succeeded, 1 failed)"
    )
    watch.add_argument("job_id")
    source = watch.add_mutually_exclusive_group()
    source.add_argument(
        "--topic-arn",
        default=os.environ.get("LORAQ_TOPIC_ARN"),
        help="the events topic (default: $LORAQ_TOPIC_ARN)",
    )
    source.add_argument(
        "--repo",
        help="follow UPDATES/status.json in this Hub model repository instead (no AWS needed; "
        "updates come at the worker's commit interval, 60 s by default)",
    )
    watch.add_argument(
        "--volume",
        help="replay the job's journal from this volume first (events published "
        "before the watch began)",
    )
    watch.add_argument(
        "--hf-endpoint",
        default=os.environ.get("HF_ENDPOINT"),
        help="Hub endpoint for --repo (default: $HF_ENDPOINT, else huggingface.co); "
        "token: $HF_TOKEN",
    )
    watch.add_argument(
        "--interval",
        type=float,
        help="seconds between two polls of the Hub, with --repo (default 10, at least 0.5)",
    )
    watch.set_defaults(func=_watch)

    status = sub.add_parser("status", help="a job's latest status, from a volume or the Hub")
    status.add_argument("job_id")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--volume", help="read the job's journal on this volume")
    where.add_argument("--repo", help="read UPDATES/status.json from this Hub model repository")
    status.add_argument(
        "--hf-endpoint",
        default=os.environ.get("HF_ENDPOINT"),
        help="Hub endpoint for --repo (default: $HF_ENDPOINT, else huggingface.co); "
        "token: $HF_TOKEN",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)
