"""Parse the trainer's stdout into typed records.

The lines are diffusion-pipe's and DeepSpeed's own (``steps: N loss: X iter time (s): T
samples/sec: S`` comes from DeepSpeed's pipeline engine); ``tiny`` prints the same ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STEP = re.compile(
    r"steps:\s*(?P<step>\d+)\s+loss:\s*(?P<loss>[-+\w.]+)"
    r".*?iter time \(s\):\s*(?P<iter>[\d.]+)\s+samples/sec:\s*(?P<sps>[\d.]+)"
)
_EPOCH = re.compile(r"Started new epoch:\s*(?P<epoch>\d+)")
_SAVING = re.compile(r"Saving model to directory\s+(?P<name>\S+)")
_RESUMING = re.compile(r"Resuming at epoch:\s*(?P<epoch>\d+),\s*step:\s*(?P<step>\d+)")
# torch's allocator message, raised as ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``
# is the same class) and printed by the traceback of whichever rank ran out.
_OOM = re.compile(r"(OutOfMemoryError:|CUDA out of memory)")
# DeepSpeed's torch checkpoint engine (runtime/checkpoint_engine/torch_checkpoint_engine.py),
# printed at the info level diffusion-pipe sets (train.py line 279 at 8f83dbf).
_CHECKPOINT_SAVING = re.compile(r"Checkpoint (?P<tag>global_step\d+) is about to be saved")
_COMPLETE = "TRAINING COMPLETE!"
_QUIT = "Manually quitting"


@dataclass(frozen=True)
class StepLine:
    step: int
    loss: float
    iter_time_s: float
    samples_per_s: float


@dataclass(frozen=True)
class EpochLine:
    epoch: int


@dataclass(frozen=True)
class SavedModelLine:
    name: str


@dataclass(frozen=True)
class ResumedLine:
    epoch: int
    step: int


@dataclass(frozen=True)
class CompleteLine:
    pass


@dataclass(frozen=True)
class QuitLine:
    pass


@dataclass(frozen=True)
class CheckpointSavingLine:
    tag: str


@dataclass(frozen=True)
class OutOfMemoryLine:
    text: str


TrainerLine = (
    StepLine
    | EpochLine
    | SavedModelLine
    | ResumedLine
    | CompleteLine
    | QuitLine
    | CheckpointSavingLine
    | OutOfMemoryLine
)


def parse_line(line: str) -> TrainerLine | None:
    if match := _STEP.search(line):
        try:
            loss = float(match["loss"])
        except ValueError:
            loss = float("nan")
        return StepLine(int(match["step"]), loss, float(match["iter"]), float(match["sps"]))
    if match := _EPOCH.search(line):
        return EpochLine(int(match["epoch"]))
    if match := _SAVING.search(line):
        return SavedModelLine(match["name"])
    if match := _RESUMING.search(line):
        return ResumedLine(int(match["epoch"]), int(match["step"]))
    if _COMPLETE in line:
        return CompleteLine()
    if _QUIT in line:
        return QuitLine()
    if match := _CHECKPOINT_SAVING.search(line):
        return CheckpointSavingLine(match["tag"])
    if _OOM.search(line):
        return OutOfMemoryLine(line.strip())
    return None
