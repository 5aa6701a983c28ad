"""The ``loraq`` command: ``worker``, ``stack``, ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading

from infra.logging import configure_logging


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
    return demo.main(args.volume, args.epochs, args.keep)


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
    demo.add_argument("--volume", default=None, help="job volume (default: a temporary folder)")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--keep", action="store_true", help="keep the temporary volume")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
