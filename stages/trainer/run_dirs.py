"""Find what a resume can trust in diffusion-pipe's ``output_dir``.

Layout: ``output_dir/<%Y%m%d_%H-%M-%S>/{epochN/, global_stepN/, latest}``. DeepSpeed writes
``latest`` only after every file of ``global_stepN`` is saved, so a checkpoint is complete iff
``latest`` names a tag whose folder exists. A run dir without one (the worker died before the
first checkpoint, or mid-save of the first) is not resumable, and diffusion-pipe's own
``--resume_from_checkpoint`` (no value) would pick it just for sorting last: we name the run
dir explicitly instead.

Model folders are written in place (``utils/saver.py`` lines 58-85 at 8f83dbf): ``epochN/tmp``
is made first (``exist_ok=False``) and removed last, so a folder still holding ``tmp/`` is a
torn save: its LoRA may be half written, and the next save of the same name would raise
``FileExistsError``. Such folders are never trusted and are removed before a resume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = re.compile(r"^\d{8}_\d{2}-\d{2}-\d{2}$")
STEP_TAG = re.compile(r"^global_step(?P<step>\d+)$")
MODEL_DIR = re.compile(r"^(?P<kind>epoch|step)(?P<n>\d+)$")
LATEST_FILE = "latest"
SAVE_TMP_DIR = "tmp"


@dataclass(frozen=True)
class Checkpoint:
    run_dir: Path
    tag: str
    step: int


def run_dirs(output_dir: Path) -> list[Path]:
    if not output_dir.exists():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and RUN_DIR.match(p.name))


def checkpoint_in(run_dir: Path) -> Checkpoint | None:
    try:
        tag = (run_dir / LATEST_FILE).read_text().strip()
    except OSError:
        return None
    match = STEP_TAG.match(tag)
    if not match or not (run_dir / tag).is_dir() or not any((run_dir / tag).iterdir()):
        return None
    return Checkpoint(run_dir, tag, int(match["step"]))


def newest_checkpoint(output_dir: Path) -> Checkpoint | None:
    for run_dir in reversed(run_dirs(output_dir)):
        if found := checkpoint_in(run_dir):
            return found
    return None


def saved_models(run_dir: Path, lora_file: str) -> list[tuple[str, int, Path]]:
    """Complete model folders (``epochN``/``stepN`` holding the LoRA file and no ``tmp/``),
    oldest first."""
    found = []
    for child in _model_dirs(run_dir):
        match = MODEL_DIR.match(child.name)
        if match and (child / lora_file).is_file() and not is_torn(child):
            found.append((match["kind"], int(match["n"]), child))
    return sorted(found, key=lambda item: (item[0] == "epoch", item[1]))


def is_torn(model_dir: Path) -> bool:
    """The saver's ``tmp/`` is still there: the save never reached its last line."""
    return (model_dir / SAVE_TMP_DIR).exists()


def torn_saves(run_dir: Path) -> list[Path]:
    return sorted(child for child in _model_dirs(run_dir) if is_torn(child))


def _model_dirs(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return [child for child in run_dir.iterdir() if child.is_dir() and MODEL_DIR.match(child.name)]


def step_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Every non-empty ``global_stepN`` folder, oldest first (DeepSpeed keeps them all)."""
    found = []
    for child in run_dir.iterdir() if run_dir.is_dir() else []:
        match = STEP_TAG.match(child.name)
        if match and child.is_dir() and any(child.iterdir()):
            found.append(Checkpoint(run_dir, child.name, int(match["step"])))
    return sorted(found, key=lambda found: found.step)


def newest_run_dir(output_dir: Path) -> Path | None:
    dirs = run_dirs(output_dir)
    return dirs[-1] if dirs else None
