"""Fetch + extract of a realistic dataset zip: loraq's fetch stage against ``curl`` + ``unzip``.

A ~80 MB zip of 200 generated photo-like images (JPEG 1024² and PNG 448², a few hundred KB
each) with captions is served by an aiohttp file server (ETag, Accept-Ranges, sendfile) in its
own process. Each round runs, in rotating order:
  - loraq: the real fetch stage (``stages.fetch.run``: ``infra/download.py`` streaming to a
    ``.partial`` with its sidecar, fsync and rename, ``infra/archive.py`` safe extraction,
    stray-file removal), once with media validation and once with it switched off;
  - ``curl -s -o archive URL && unzip -q archive -d dir && rm archive`` (no ``bsdtar`` on this
    machine, and unzip cannot read a pipe, so curl writes a file first).
Also timed alone each round: the download half of each (``download_http`` vs ``curl -o``), the
extraction half (``safe_extract`` vs ``unzip``) and the validation pass. We report each arm's
median wall time and the per-round ratio loraq ÷ curl+unzip (median, min, max).

    .venv/bin/python bench/fetch_extract.py [--rounds 5] [--images 200]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import write_result
from infra.archive import safe_extract
from infra.download import download_http
from stages import fetch
from stages.media import problem_with
from tests.captioning.conftest import make_context

ALLOW = ["127.0.0.1"]


def photo(side: int, seed: int) -> Image.Image:
    """A gradient with sensor-like noise: compresses like a photo, unlike flat colour or noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x * 200 + 30, y * 180 + 40, (1 - x) * 150 + 60], -1)
    base += rng.normal(0, 14, (side, side, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def build_archive(path: Path, count: int) -> dict[str, Any]:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(count):
            buffer = io.BytesIO()
            if index % 5 < 3:
                photo(1024, index).save(buffer, format="JPEG", quality=90)
                name = f"dataset/photo_{index:03d}.jpg"
            else:
                photo(448, index).save(buffer, format="PNG")
                name = f"dataset/photo_{index:03d}.png"
            archive.writestr(name, buffer.getvalue())
            archive.writestr(f"dataset/photo_{index:03d}.txt", f"a photo, number {index}")
    return {"images": count, "captions": count, "bytes": path.stat().st_size}


SERVER = """
import asyncio, sys
from aiohttp import web

async def serve(request):
    return web.FileResponse(sys.argv[1] + "/" + request.match_info["name"])

async def main():
    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_server(root: Path) -> tuple[subprocess.Popen[str], int]:
    """The file server in its own process, so it does not share this process's GIL."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def loraq_stage(url: str, scratch: Path, validate: bool) -> float:
    volume = scratch / "volume"
    ctx = make_context(volume, "http://unused", fetch_allow=ALLOW)
    dataset = ctx.request.dataset.model_copy(update={"images_url": url, "videos_url": None})
    ctx.request = ctx.request.model_copy(update={"dataset": dataset})
    skip = mock.patch.object(fetch, "problem_with", lambda _path: None)
    with skip if not validate else mock.patch.object(fetch, "problem_with", problem_with):
        elapsed = timed(lambda: asyncio.run(fetch.run(ctx)))
    count = len(list((ctx.paths.dataset / "images").iterdir()))
    shutil.rmtree(volume)
    assert count > 0, "the stage extracted nothing"
    return elapsed


def curl_unzip(url: str, scratch: Path) -> float:
    out = scratch / "curl"
    out.mkdir()
    command = (
        f"curl -s -f -o {out}/a.zip {url} && unzip -q {out}/a.zip -d {out}/x && rm {out}/a.zip"
    )
    elapsed = timed(lambda: subprocess.run(["sh", "-c", command], check=True))
    shutil.rmtree(out)
    return elapsed


def halves(url: str, scratch: Path) -> dict[str, float]:
    """Download and extraction timed apart, loraq's and the command-line tools'."""
    out = scratch / "halves"
    out.mkdir()
    archive = out / "a.zip"
    times = {
        "loraq_download": timed(
            lambda: asyncio.run(download_http(url, archive, max_bytes=1 << 40, allow=ALLOW))
        ),
        "loraq_extract": timed(lambda: safe_extract(archive, out / "x")),
    }
    files = [p for p in (out / "x").iterdir() if p.suffix != ".txt"]
    times["loraq_validate"] = timed(lambda: [problem_with(p) for p in files])
    archive.unlink()
    times["curl_download"] = timed(
        lambda: subprocess.run(["curl", "-s", "-f", "-o", str(archive), url], check=True)
    )
    times["unzip"] = timed(
        lambda: subprocess.run(["unzip", "-q", str(archive), "-d", str(out / "u")], check=True)
    )
    shutil.rmtree(out)
    return times


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraq-bench-fetch-") as tmp:
        www, scratch = Path(tmp) / "www", Path(tmp) / "scratch"
        www.mkdir()
        scratch.mkdir()
        archive = build_archive(www / "dataset.zip", args.images)
        server, port = start_server(www)
        url = f"http://127.0.0.1:{port}/dataset.zip"
        try:
            summary = measure(url, scratch, args.rounds)
        finally:
            server.kill()
            server.wait()
    write_result("fetch_extract", {"archive": archive, "rounds": args.rounds, **summary})


def measure(url: str, scratch: Path, rounds: int) -> dict[str, Any]:
    arms: dict[str, Callable[[], float]] = {
        "loraq_with_validation": lambda: loraq_stage(url, scratch, validate=True),
        "loraq_without_validation": lambda: loraq_stage(url, scratch, validate=False),
        "curl_unzip": lambda: curl_unzip(url, scratch),
    }
    names = list(arms)
    walls: dict[str, list[float]] = {name: [] for name in names}
    parts: dict[str, list[float]] = {}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            walls[name].append(arms[name]())
        for key, value in halves(url, scratch).items():
            parts.setdefault(key, []).append(value)
    ratios = {
        f"{name}_vs_curl_unzip": spread(
            [a / b for a, b in zip(walls[name], walls["curl_unzip"], strict=True)]
        )
        for name in names[:2]
    }
    return {
        "tool": "curl -s -o file, then unzip -q (bsdtar absent; unzip cannot read a pipe)",
        "cpus": os.cpu_count(),
        "wall_s": {name: spread(values) for name, values in walls.items()},
        "ratio": ratios,
        "halves_s": {name: spread(values) for name, values in parts.items()},
    }


if __name__ == "__main__":
    main()
