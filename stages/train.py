"""Train: run the trainer to completion, resuming from the newest complete checkpoint.

Progress events come from the trainer's own stdout; checkpoints are noticed when DeepSpeed's
``latest`` file moves. On shutdown the trainer is asked to checkpoint and quit (``save_quit``)
when that can finish in the grace, so the next worker loses at most the steps since that
checkpoint. A resume never trusts a torn save and never starts from a final checkpoint
(``stages/trainer/resume_point.py``): upstream would train a whole extra epoch from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from pathlib import Path

import structlog

from contracts.enums import ErrorCode, EventType, StageName
from contracts.events import CheckpointData, ProgressData
from stages.configure import TRAIN_TOML
from stages.context import StageContext, StageOutcome
from stages.errors import Interrupted, Retryable
from stages.lora_check import nonfinite_tensors
from stages.registry import ModelSpec, spec_for
from stages.trainer.failures import Diverged, LoraDiverged, OutOfMemory
from stages.trainer.launcher import (
    Launch,
    TrainerProcess,
    build_launch,
    clear_control_files,
    request_save_quit,
)
from stages.trainer.log_parser import (
    CheckpointSavingLine,
    CompleteLine,
    EpochLine,
    OutOfMemoryLine,
    QuitLine,
    ResumedLine,
    StepLine,
    parse_line,
)
from stages.trainer.progress import ProgressTracker
from stages.trainer.resume_point import ResumePoint, plan_resume
from stages.trainer.run_dirs import checkpoint_in, newest_run_dir, saved_models
from stages.trainer.stop_cost import StopClock

log = structlog.get_logger("loraq.train")

NAME = StageName.TRAIN
LOG_FILE = "logs/train.log"
LATENTS_CACHED = "latents_cached"
CACHING_STARTED = "caching_started"
_TAIL_LINES = 20


class _Watch:
    """Turns trainer lines into events and remembers what a caller needs afterwards."""

    def __init__(self, ctx: StageContext, total_steps: int | None, resumed_tag: str | None):
        self.ctx = ctx
        self.progress = ProgressTracker(total_steps)
        self.checkpoint_tag = resumed_tag
        self.complete = False
        self.quit = False
        self.out_of_memory: str | None = None
        self.stop_clock = StopClock()
        self._warned_grace = False
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._bad_losses = 0

    async def line(self, text: str) -> None:
        self.tail.append(text)
        parsed = parse_line(text)
        if isinstance(parsed, StepLine):
            self._check_finite(parsed.loss)
            self.progress.record(parsed.step, parsed.iter_time_s)
            self.stop_clock.step_done(parsed.iter_time_s, self.progress.slowest_step_s)
            self._warn_if_grace_too_short()
            await self._progress(parsed)
            await self.check_checkpoint()
        elif isinstance(parsed, (EpochLine, ResumedLine)):
            self.progress.epoch = parsed.epoch
        elif isinstance(parsed, CompleteLine):
            self.complete = True
        elif isinstance(parsed, QuitLine):
            self.quit = True
        elif isinstance(parsed, CheckpointSavingLine):
            self.stop_clock.checkpoint_started()
        elif isinstance(parsed, OutOfMemoryLine):
            self.out_of_memory = self.out_of_memory or parsed.text

    def _warn_if_grace_too_short(self) -> None:
        """Once a job: a SIGTERM now would end in SIGKILL and lose the work since the last
        checkpoint. The operator can raise LORAQ_SHUTDOWN_GRACE_S (and the pod's grace) or
        checkpoint more often (docs/operations.md, "Shutdown")."""
        worst = self.stop_clock.worst_stop_s()
        budget = save_quit_budget(self.ctx)
        if self._warned_grace or worst is None or worst <= budget:
            return
        self._warned_grace = True
        log.warning(
            "train.shutdown_grace_too_short",
            step_s=round(self.progress.slowest_step_s or 0.0, 1),
            checkpoint_s=self.stop_clock.checkpoint_s,
            save_quit_budget_s=budget,
        )

    def _check_finite(self, loss: float) -> None:
        limit = self.ctx.settings.max_nonfinite_loss_steps
        self._bad_losses = 0 if math.isfinite(loss) else self._bad_losses + 1
        if limit and self._bad_losses >= limit:
            raise Diverged(self._bad_losses)

    async def _progress(self, parsed: StepLine) -> None:
        p = self.progress
        await self.ctx.emit(
            EventType.JOB_PROGRESS,
            ProgressData(
                job_id=self.ctx.job_id,
                epoch=p.epoch,
                step=parsed.step,
                total_steps=p.total_steps,
                loss=parsed.loss,
                samples_per_s=parsed.samples_per_s,
                eta_s=p.eta_s,
                percent=p.percent,
            ),
        )

    async def check_checkpoint(self) -> None:
        run_dir = newest_run_dir(self.ctx.paths.output)
        found = checkpoint_in(run_dir) if run_dir else None
        if found is None or found.tag == self.checkpoint_tag:
            return
        self.checkpoint_tag = found.tag
        await self.ctx.emit(
            EventType.JOB_CHECKPOINTED,
            CheckpointData(
                job_id=self.ctx.job_id, step=found.step, epoch=self.progress.epoch, tag=found.tag
            ),
        )


async def run(ctx: StageContext) -> StageOutcome:
    spec = spec_for(ctx.request.model_type)
    cached = await _cache_latents(ctx, spec)
    total = ctx.output_of(StageName.CONFIGURE, "total_steps")
    point = await asyncio.to_thread(
        plan_resume, ctx.paths.output, ctx.paths.config / TRAIN_TOML, spec.lora_file
    )
    _log_resume_point(point)
    if point.finished and point.checkpoint is not None:
        # The trainer finished, then we died before recording it: resuming would train more.
        outcome = _saved_outcome(point.checkpoint.run_dir, spec.lora_file, point.checkpoint.step)
        return await _checked(ctx, outcome, cached)
    resume = point.checkpoint
    clear_control_files(ctx.paths.output)
    launch = build_launch(
        ctx.settings,
        spec,
        ctx.paths.config / TRAIN_TOML,
        resume=resume,
        trust_cache=cached,
        secrets=_trainer_secrets(ctx),
    )
    watch = _Watch(
        ctx, int(total) if isinstance(total, int) else None, resume.tag if resume else None
    )
    if resume is not None:
        watch.progress.step = resume.step
    interrupted, code = await _run_trainer(ctx, launch, watch)
    await watch.check_checkpoint()
    if interrupted:
        raise Interrupted("the worker is shutting down", stage=NAME, step=watch.progress.step)
    return await _checked(ctx, _outcome(ctx, watch, code, spec.lora_file), cached)


async def _checked(ctx: StageContext, outcome: StageOutcome, cached: bool) -> StageOutcome:
    await _refuse_nonfinite(ctx, Path(str(outcome.outputs["lora_path"])))
    outcome.outputs[LATENTS_CACHED] = cached
    return outcome


def _log_resume_point(point: ResumePoint) -> None:
    if point.removed or point.rolled_back_from:
        log.warning(
            "train.resume_repaired",
            torn_saves_removed=list(point.removed),
            final_checkpoint_not_resumed=point.rolled_back_from,
            resuming_from=point.checkpoint.tag if point.checkpoint else None,
        )


async def _refuse_nonfinite(ctx: StageContext, lora_path: Path) -> None:
    """The stage completes only with a LoRA worth delivering (``stages/lora_check.py``)."""
    bad, count = await asyncio.to_thread(nonfinite_tensors, lora_path)
    if bad:
        raise LoraDiverged(ctx.request.training, lora_path.parent.name, len(bad), count)


async def _cache_latents(ctx: StageContext, spec: ModelSpec) -> bool:
    """Cache latents in a run of its own, recorded in the ledger before training starts.

    diffusion-pipe keeps the cache beside the dataset, inside the job directory. A caching run
    that died half way is redone with ``--regenerate_cache``, so a torn cache is never trusted;
    a finished one is trusted (``--trust_cache``) without re-fingerprinting the dataset.
    """
    record = ctx.ledger.stage(NAME)
    if not spec.caches_latents:
        return False
    if record.outputs.get(LATENTS_CACHED) is True:
        return True
    torn = record.outputs.get(CACHING_STARTED) is True
    record.outputs[CACHING_STARTED] = True
    ctx.store.save_ledger(ctx.ledger)
    launch = build_launch(
        ctx.settings,
        spec,
        ctx.paths.config / TRAIN_TOML,
        cache_only=True,
        regenerate_cache=torn,
        secrets=_trainer_secrets(ctx),
    )
    watch = _Watch(ctx, None, None)
    interrupted, code = await _run_trainer(ctx, launch, watch)
    if interrupted:
        raise Interrupted("the worker is shutting down while caching", stage=NAME)
    if code != 0:
        tail = "\n".join(watch.tail)
        raise Retryable(ErrorCode.TRAINING_FAILED, f"caching exited with code {code}:\n{tail}")
    record.outputs[LATENTS_CACHED] = True
    ctx.store.save_ledger(ctx.ledger)
    return True


def _trainer_secrets(ctx: StageContext) -> dict[str, str]:
    return {
        name: value.get_secret_value()
        for name, value in ctx.request.training.trainer_secrets.items()
    }


async def _run_trainer(ctx: StageContext, launch: Launch, watch: _Watch) -> tuple[bool, int]:
    """One trainer process from start to exit: (stopped for a shutdown?, exit code)."""
    log_path = ctx.paths.root / LOG_FILE
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = await TrainerProcess.start(launch)
    try:
        interrupted = await _supervise(ctx, process, watch, log_path)
        return interrupted, await process.wait()
    finally:
        # Whatever happened to us (cancelled, crashed), no rank of this job may outlive it.
        process.finish()


async def _supervise(
    ctx: StageContext, process: TrainerProcess, watch: _Watch, log_path: Path
) -> bool:
    """Read the trainer until it exits; True if we asked it to stop for a shutdown."""
    reader = asyncio.create_task(_read(process, watch, log_path))
    stop = asyncio.create_task(ctx.stop_requested.wait())
    try:
        await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            await reader
            return False
        run_dir = newest_run_dir(ctx.paths.output)
        budget = save_quit_budget(ctx)
        if run_dir is not None and watch.progress.step > 0 and _save_quit_fits(watch, budget):
            request_save_quit(run_dir)
        else:
            process.kill_group()
        try:
            await asyncio.wait_for(asyncio.shield(reader), budget)
        except TimeoutError:
            process.kill_group()
            await reader
        # The stop may race the end: a trainer that printed TRAINING COMPLETE! has finished
        # (its final checkpoint is past the end, and resuming from it trains a whole epoch more).
        return not watch.complete
    finally:
        stop.cancel()
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def save_quit_budget(ctx: StageContext) -> float:
    """The trainer's share of the shutdown grace: the rest publishes the hand-back."""
    grace = ctx.settings.shutdown_grace_s
    return max(grace * 0.5, grace - 15)


def _save_quit_fits(watch: _Watch, budget: float) -> bool:
    """A save_quit that cannot finish in time is not asked for: the trainer is stopped at
    once, and the grace goes to handing the job back (``stages/trainer/stop_cost.py``)."""
    needed = watch.stop_clock.stop_now_s()
    if needed is None or needed <= budget:
        return True
    log.warning("train.save_quit_skipped", needed_s=round(needed, 1), budget_s=budget)
    return False


async def _read(process: TrainerProcess, watch: _Watch, log_path: Path) -> None:
    with log_path.open("a", encoding="utf-8") as log:
        async for text in process.lines():
            # The trainer prints what its libraries print; the request's secrets stay masked.
            log.write(watch.ctx.redact(text) + "\n")
            log.flush()
            await watch.line(text)


def _outcome(ctx: StageContext, watch: _Watch, code: int, lora_file: str) -> StageOutcome:
    if code != 0 and watch.out_of_memory:
        spec = spec_for(ctx.request.model_type)
        raise OutOfMemory(spec, ctx.request.training, watch.out_of_memory)
    if code != 0 or not watch.complete:
        tail = "\n".join(watch.tail)
        reason = "stopped before finishing" if watch.quit else f"exited with code {code}"
        raise Retryable(ErrorCode.TRAINING_FAILED, f"the trainer {reason}; last output:\n{tail}")
    run_dir = newest_run_dir(ctx.paths.output)
    if run_dir is None:
        raise Retryable(ErrorCode.TRAINING_FAILED, f"training finished but wrote no {lora_file}")
    return _saved_outcome(run_dir, lora_file, watch.progress.step, watch.progress.epoch)


def _saved_outcome(
    run_dir: Path, lora_file: str, final_step: int, epoch: int | None = None
) -> StageOutcome:
    """The newest complete model folder (never a torn one: ``run_dirs.is_torn``)."""
    models = saved_models(run_dir, lora_file)
    if not models:
        raise Retryable(ErrorCode.TRAINING_FAILED, f"training finished but wrote no {lora_file}")
    kind, number, model_dir = models[-1]
    epochs = number if kind == "epoch" or epoch is None else epoch
    return StageOutcome(
        {
            "run_dir": str(run_dir),
            "model_dir": str(model_dir),
            "lora_path": str(model_dir / lora_file),
            "latest_epoch": model_dir.name,
            "epochs_completed": epochs,
            "final_step": final_step,
        }
    )
