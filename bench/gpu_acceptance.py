"""The GPU acceptance run: every model type, one real job each, on one GPU with no network.

    # here, on a machine with PyPI and the repository mirrors (once; .acceptance/ is ignored):
    .venv/bin/python bench/gpu_acceptance.py prepare
    # on the GPU machine, from the repository root, with .acceptance carried along:
    python3 bench/gpu_acceptance.py run --out "$OUT"

``run`` checks the machine (python, CUDA torch, the carried files) and says what is missing
before anything else; installs the carried wheels into a folder of its own; builds random-weight
miniatures of the six real model types in exactly the layout ``provision`` leaves on a volume;
then through a real worker on the local stack (moto's SQS, SNS and S3 on 127.0.0.1) into real
diffusion-pipe runs one job per type, a SIGKILL of a worker mid-save and its resume, and a
SIGTERM hand-back; and the same training config through bare diffusion-pipe. It prints a table
per model and writes ``acceptance.json``. Everything is bounded by ``--deadline-s``: whatever
has not finished by then is reported as such, and the table is still printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _prepare(args: argparse.Namespace) -> int:
    from bench.acceptance import prepare

    explicit = {}
    for item in args.submodule:
        path, _, gitdir = item.partition("=")
        explicit[path] = Path(gitdir)
    manifest, spare = prepare.prepare(
        REPO,
        dp_gitdir=Path(args.dp_gitdir) if args.dp_gitdir else None,
        submodules=explicit,
        downloads=Path(args.downloads) if args.downloads else None,
    )
    print(manifest.to_json())
    for problem in manifest.missing:
        print(f"MISSING: {problem}", file=sys.stderr)
    if spare < 0:
        print(f"OVER BUDGET by {-spare / 2**20:.1f} MiB", file=sys.stderr)
        return 2
    print(f"{spare / 2**20:.1f} MiB to spare under the device's 64 MiB", file=sys.stderr)
    return 2 if manifest.missing else 0


def _run(args: argparse.Namespace) -> int:
    from bench.acceptance import driver

    return driver.main(args)


def _matrix(args: argparse.Namespace) -> int:
    from bench.acceptance import matrix

    return matrix.main(args)


def _build(args: argparse.Namespace) -> int:
    from bench.acceptance import driver

    return driver.build_group(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="pack diffusion-pipe and the wheels (CPU)")
    prep.add_argument("--dp-gitdir", help="a git directory holding the pinned commit")
    prep.add_argument(
        "--submodule",
        action="append",
        default=[],
        metavar="PATH=GITDIR",
        help="where a submodule's commit is, if no mirror holds it",
    )
    prep.add_argument("--downloads", help="the wheel download cache")
    prep.set_defaults(func=_prepare)
    for name, func, text in (
        ("run", _run, "the acceptance run (GPU machine)"),
        ("matrix", _matrix, "(internal) run's second half, with the carried site on the path"),
    ):
        run = commands.add_parser(name, help=text)
        run.add_argument("--out", default="acceptance-results", help="where the JSON goes")
        run.add_argument("--work", default="/tmp/loraq-acceptance", help="volume and scratch")
        run.add_argument("--deadline-s", type=float, default=540.0)
        run.add_argument("--only", default="", help="comma-separated model types")
        run.add_argument("--fault-model", default="flux")
        run.add_argument("--skip-faults", action="store_true")
        run.add_argument("--skip-bare", action="store_true")
        run.set_defaults(func=func)
    build = commands.add_parser("build", help="(internal) build one group's miniatures")
    build.add_argument("--work", required=True)
    build.add_argument("--dp-dir", required=True)
    build.add_argument("--types", required=True)
    build.add_argument("--device", default="cpu")
    build.set_defaults(func=_build)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
