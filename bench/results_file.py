"""Where the benchmarks leave their numbers: bench/results/<name>.json (git-ignored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, summary: Any, folder: Path = RESULTS) -> None:
    """Save ``summary`` as JSON and print it, so a run's numbers survive the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2)
    (folder / f"{name}.json").write_text(text)
    print(text)
