"""The ``loraq`` command: ``worker``, ``stack``, ``demo``, ``config``, ``provision``, and for
users of the service ``submit``, ``watch``, ``status``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from infra.logging import configure_logging
from loraq.user_commands import add_user_commands


def _worker(args: argparse.Namespace) -> int:
    from infra.settings import Settings
    from loraq.app import run_worker

    configure_logging(args.log_level)
    settings = Settings()  # read from LORAQ_* variables
    asyncio.run(run_worker(settings, slots=args.slots))
    return 0


def _stack(args: argparse.Namespace) -> int:
    from infra.local_stack import start_local_stack

    stack = start_local_stack(args.port)
    for name, value in stack.env().items():
        print(f"export {name}='{value}'")
    print("# local stack running; Ctrl-C stops it", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    stack.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from loraq import demo

    configure_logging("WARNING", json=False)
    return demo.main(args.volume, args.epochs)


def _config(args: argparse.Namespace) -> int:
    from loraq.model_commands import config_command

    counts = {kind: n for kind in ("images", "videos") if (n := getattr(args, kind)) is not None}
    return config_command(
        Path(args.job),
        Path(args.out),
        Path(args.volume),
        offline=args.offline,
        media=counts,
        gpu_memory_gib=args.gpu_memory_gib,
    )


def _provision(args: argparse.Namespace) -> int:
    from loraq.model_commands import provision_command

    configure_logging("WARNING", json=False)
    return provision_command(args.model_types, Path(args.volume), args.endpoint)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a count is 0 or more")
    return value


def _add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from loraq.model_commands import PROVISIONABLE, default_volume

    config = sub.add_parser(
        "config",
        help="dry run: check a job as a worker would (its LORAQ_* settings), then write the "
        "train.toml and dataset.toml it would run with and what it would cost",
    )
    config.add_argument("job", help='the job request: a JSON file {"input": {...}}')
    config.add_argument("--out", required=True, help="folder for train.toml and dataset.toml")
    config.add_argument(
        "--volume",
        default=str(default_volume()),
        help="the volume the paths point into (default: $LORAQ_VOLUME or /var/lib/loraq)",
    )
    config.add_argument(
        "--offline",
        action="store_true",
        help="skip the checks that need the network (Hub access for the token, dataset URLs)",
    )
    for kind in ("images", "videos"):
        config.add_argument(
            f"--{kind}",
            type=_count,
            metavar="N",
            help=f"the dataset's number of {kind}, for the predicted step count",
        )
    config.add_argument(
        "--gpu-memory-gib",
        type=float,
        metavar="GIB",
        help="the worker GPU's memory (default: $LORAQ_GPU_MEMORY_GIB, else this machine's)",
    )
    config.set_defaults(func=_config)
    provision = sub.add_parser(
        "provision", help="download model weights into the volume's models/ (token: $HF_TOKEN)"
    )
    provision.add_argument("model_types", nargs="+", metavar="TYPE", choices=PROVISIONABLE)
    provision.add_argument(
        "--volume",
        default=str(default_volume()),
        help="the volume to fill (default: $LORAQ_VOLUME or /var/lib/loraq)",
    )
    provision.add_argument(
        "--endpoint",
        default=os.environ.get("LORAQ_HF_ENDPOINT"),
        help="Hub endpoint (default: $LORAQ_HF_ENDPOINT, else huggingface_hub's own)",
    )
    provision.set_defaults(func=_provision)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a worker until SIGTERM/SIGINT")
    worker.add_argument(
        "--slots",
        type=int,
        default=1,
        help="jobs run at once; each trainer sees every GPU, so keep 1 per GPU machine",
    )
    worker.add_argument("--log-level", default="INFO")
    worker.set_defaults(func=_worker)
    stack = sub.add_parser("stack", help="run the local SQS/SNS/S3 stack in the foreground")
    stack.add_argument("--port", type=int, default=None)
    stack.set_defaults(func=_stack)
    demo = sub.add_parser("demo", help="run one real tiny job end to end on the local stack")
    demo.add_argument("--volume", default="demo-volume", help="job volume (kept afterwards)")
    demo.add_argument("--epochs", type=int, default=10)
    demo.set_defaults(func=_demo)
    _add_model_commands(sub)
    add_user_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
