"""Video captioning throughput vs concurrency, against the local Gemini server.

Each generate call holds for ``--latency`` seconds (the model's time, which dominates real
captioning); uploads, polls and deletes run at local speed. The real google-genai client and
loraq's ``GeminiCaptioner`` + ``caption_files`` do the work, so the ratio measures our fan-out,
not a mock. Target: throughput at K ≥ 0.8·K × sequential.

    .venv/bin/python bench/caption_concurrency.py [--files 24] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from stages.captioners import caption_files
from stages.captioners.gemini import GeminiCaptioner, GeminiOptions
from tests.gemini_server import gemini_server
from tests.media import write_video

KEY = "AIzaBenchKey"


async def _run(url: str, videos: list[Path], concurrency: int) -> float:
    options = GeminiOptions(
        models=("gemini-2.5-flash",), prompt="describe", base_url=url, poll_interval_s=0.01
    )
    captioner = GeminiCaptioner(SecretStr(KEY), options)
    captions: dict[Path, str] = {}
    try:
        started = time.perf_counter()
        await caption_files(captioner, videos, concurrency, captions.__setitem__)
        elapsed = time.perf_counter() - started
    finally:
        await captioner.aclose()
    assert len(captions) == len(videos)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        videos = [write_video(Path(tmp) / f"clip{i}.mp4") for i in range(args.files)]
        with gemini_server(KEY, latency_s=args.latency) as (url, state):
            asyncio.run(_run(url, videos[:2], 2))  # warm: imports, first connections
            rows = []
            for k in (1, 2, 4, 8):
                state.max_in_flight = 0
                elapsed = asyncio.run(_run(url, videos, k))
                rows.append({"k": k, "s": elapsed, "max_in_flight": state.max_in_flight})
    base = rows[0]["s"]
    print(f"{args.files} videos, {args.latency * 1000:.0f} ms per generate call")
    print(f"{'K':>3} {'seconds':>8} {'files/s':>8} {'ratio':>6} {'target':>7} {'peak':>5}")
    for row in rows:
        row["ratio"] = base / row["s"]
        row["target"] = 0.8 * row["k"]
        print(
            f"{row['k']:>3} {row['s']:>8.2f} {args.files / row['s']:>8.1f} "
            f"{row['ratio']:>6.2f} {row['target']:>7.1f} {row['max_in_flight']:>5}"
        )
    args.out.mkdir(exist_ok=True)
    (args.out / "caption_concurrency.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
