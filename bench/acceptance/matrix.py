"""``run``, second half: miniatures built, one real job per type, the faults, the bare runs.

Runs with the carried site on ``PYTHONPATH`` (``driver.main`` starts it). Everything happens at
once where it can, because the whole run has ten minutes: the builds in one process per group,
the jobs on one worker process each (real ``loraq worker`` processes, the fault tests' own
harness), the two fault scenarios on queues of their own so that no other worker takes their
jobs, and each bare run as soon as its model's job has finished (it reuses the job's latent
cache, so it never races the job's own caching run). Every wait is bounded by the deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml
import tomli_w

from bench.acceptance import report, safetensors_io
from bench.acceptance.driver import REPO, STAGE_ONE
from contracts.enums import ModelType, StageName
from infra.local_stack import LocalStack, start_local_stack
from infra.settings import Settings
from infra.volume import JobStore
from loraq.sample_data import image_dataset_zip
from stages.registry import spec_for
from stages.trainer.launcher import build_launch
from stages.trainer.log_parser import StepLine, parse_line
from stages.trainer.run_dirs import newest_checkpoint
from tests.faults.harness import WorkerProcess, trainer_pids

# Model types built together: Wan's three share the T5 and VAE files (hard links).
GROUPS = (
    (ModelType.FLUX,),
    (ModelType.SDXL,),
    (ModelType.WAN13, ModelType.WAN14B_T2V, ModelType.WAN14B_I2V),
    (ModelType.QWEN,),
    (ModelType.Z_IMAGE_TURBO,),
)
IMAGES = 4
RESOLUTION = 64
VIDEO_FRAMES = 9  # at 8 fps: resampled to Wan's 16 it fills the 9-frame bucket
EPOCHS = 2
FAULT_EPOCHS = 3  # a checkpoint each epoch; the kill lands in the second one's save
SAVING = re.compile(r"Checkpoint (global_step\d+) is about to be saved")


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def share(self, fraction: float) -> float:
        return self.left() * fraction


def wait_for(condition: Callable[[], bool], seconds: float, poll_s: float = 0.2) -> bool:
    """True once ``condition`` holds; False when ``seconds`` ran out first."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(poll_s)
    return True


# -- building ------------------------------------------------------------------------------------
def build_all(types: list[ModelType], work: Path, seconds: float) -> dict[str, dict[str, Any]]:
    """Each group in its own process, in parallel; a group that fails or hangs fails alone."""
    dp = work / "diffusion-pipe"
    processes = []
    for group in GROUPS:
        wanted = [t for t in group if t in types]
        if not wanted:
            continue
        names = ",".join(t.value for t in wanted)
        log = (work / "logs" / f"build-{wanted[0].value}.log").open("w")
        command = [sys.executable, str(REPO / "bench/gpu_acceptance.py"), "build"]
        command += ["--work", str(work), "--dp-dir", str(dp), "--types", names, "--device", "cuda"]
        processes.append((wanted, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
    end = time.monotonic() + seconds
    results: dict[str, dict[str, Any]] = {}
    for wanted, process in processes:
        try:
            process.wait(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
        path = work / "build" / f"{wanted[0].value}.json"
        found = json.loads(path.read_text()) if path.is_file() else {}
        for model_type in wanted:
            results[model_type.value] = found.get(
                model_type.value,
                {
                    "ok": False,
                    "error": f"the build process exited {process.returncode} "
                    f"without a result (logs/build-{wanted[0].value}.log)",
                },
            )
    return results


# -- datasets and requests -----------------------------------------------------------------------
def videos_zip(count: int) -> bytes:
    from tests.media import write_video

    buffer = io.BytesIO()
    scratch = Path(f"/tmp/loraq-acceptance-videos-{os.getpid()}")
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            path = write_video(scratch / f"clip{index}.mp4", frames=VIDEO_FRAMES, size=RESOLUTION)
            archive.write(path, path.name)
            archive.writestr(f"clip{index}.txt", f"lqclip moving colour, clip {index}")
    return buffer.getvalue()


def upload(stack: LocalStack, key: str, body: bytes) -> str:
    s3 = stack.client("s3")
    s3.put_object(Bucket=stack.bucket, Key=key, Body=body)
    url: str = s3.generate_presigned_url(
        "get_object", Params={"Bucket": stack.bucket, "Key": key}, ExpiresIn=7200
    )
    return url


def request_body(
    model_type: ModelType, job_id: str, urls: dict[str, str], stack: LocalStack, epochs: int
) -> dict[str, Any]:
    """The smallest honest job: four 64-pixel images (or clips), rank 4, a LoRA per run."""
    spec = spec_for(model_type)
    dataset: dict[str, Any] = {"type": "precaptioned", "trigger_word": "lqshape"}
    if spec.videos_only:
        dataset["videos_url"] = urls["videos"]
        dataset["video_repeats"] = 1
    else:
        dataset["images_url"] = urls["images"]
    training: dict[str, Any] = {
        "epochs": epochs,
        "learning_rate": 1e-4,
        "batch_size": 1,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "lora_rank": 4,
        "save_every_n_epochs": epochs,
        "resolution": RESOLUTION,
    }
    if spec.videos:
        training.update(frame_buckets=[1, VIDEO_FRAMES], video_clip_mode="single_beginning")
    if epochs == FAULT_EPOCHS:
        training["checkpoint_every_n_epochs"] = 1
    output = {
        "method": "s3",
        "s3": {
            "endpoint_url": stack.endpoint,
            "bucket": stack.bucket,
            "region": "us-east-1",
            "access_key": "testing",
            "secret_key": "testing",
            "key_prefix": "acceptance",
        },
    }
    body = {"model_type": model_type.value, "job_id": job_id, "dataset": dataset}
    return {"input": {**body, "training": training, "output": output}}


def send(stack: LocalStack, queue_url: str, body: dict[str, Any]) -> None:
    stack.client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))


def make_queue(stack: LocalStack, name: str) -> str:
    url: str = stack.client("sqs").create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": "30"}
    )["QueueUrl"]
    return url


# -- workers -------------------------------------------------------------------------------------
@dataclass
class Run:
    work: Path
    stack: LocalStack
    deadline: Deadline
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def volume(self) -> Path:
        return self.work / "volume"

    def worker(self, name: str, queue_url: str, **extra: str) -> WorkerProcess:
        """A real worker process on ``queue_url``; ``extra`` settings win over these."""
        env = {
            "LORAQ_QUEUE_URL": queue_url,
            "LORAQ_DIFFUSION_PIPE_DIR": str(self.work / "diffusion-pipe"),
            "LORAQ_DEEPSPEED_BIN": str(self.work / "site" / "bin" / "deepspeed"),
            "LORAQ_TORCH_EXTENSIONS_DIR": str(self.work / "torch_extensions"),
            "LORAQ_VISIBILITY_TIMEOUT": "30",
            "LORAQ_SHUTDOWN_GRACE_S": "60",
            "LORAQ_PROGRESS_INTERVAL_S": "0",
            "LORAQ_UPDATES_ENABLED": "false",
            "PYTHONPATH": os.environ["PYTHONPATH"],
            **extra,
        }
        worker = WorkerProcess(self.stack, self.volume, name, self.work / "logs", **env)
        self.workers.append(worker)
        return worker

    def journal(self, job_id: str) -> list[dict[str, Any]]:
        path = self.volume / "jobs" / job_id / "events.jsonl"
        if not path.is_file():
            return []
        return report.parse_journal(path.read_text().splitlines())

    def done(self, job_id: str) -> bool:
        return report.terminal(self.journal(job_id)) is not None

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill(signal.SIGKILL)
        for marker in (str(self.volume), str(self.work / "bare")):
            for pid in trainer_pids(marker):
                if pid != os.getpid():
                    _kill(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


# -- bare diffusion-pipe -------------------------------------------------------------------------
@dataclass
class BareRun:
    model_type: ModelType
    process: subprocess.Popen[str]
    samples: list[report.Sample] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self, log: Path) -> None:
        assert self.process.stdout is not None
        with log.open("w") as out:
            for line in self.process.stdout:
                seen = time.time()
                out.write(line)
                parsed = parse_line(line.rstrip("\n"))
                if isinstance(parsed, StepLine):
                    self.samples.append(report.Sample(seen, parsed.step))


def start_bare(run: Run, model_type: ModelType, job_id: str) -> BareRun:
    """The job's own train.toml with an output_dir of its own, launched as the train stage
    launches it (``build_launch``), with nothing of loraq's around it."""
    folder = run.work / "bare" / model_type.value
    folder.mkdir(parents=True, exist_ok=True)
    config = toml.loads((run.volume / "jobs" / job_id / "config" / "train.toml").read_text())
    config["output_dir"] = str(folder / "output")
    copy = folder / "train.toml"
    copy.write_text(tomli_w.dumps(config))
    settings = Settings(
        queue_url="unused",
        volume=run.volume,
        diffusion_pipe_dir=run.work / "diffusion-pipe",
        deepspeed_bin=str(run.work / "site" / "bin" / "deepspeed"),
        torch_extensions_dir=run.work / "torch_extensions",
    )
    launch = build_launch(settings, spec_for(model_type), copy)
    process = subprocess.Popen(
        launch.argv,
        cwd=launch.cwd,
        env=launch.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    bare = BareRun(model_type, process)
    bare.reader = threading.Thread(target=bare.read, args=(folder / "train.log",), daemon=True)
    bare.reader.start()
    return bare


# -- the faults ----------------------------------------------------------------------------------
def sigkill_mid_save(run: Run, model_type: ModelType, urls: dict[str, str]) -> report.FaultResult:
    """A worker and its trainer killed together the moment a checkpoint save begins (a lost
    node); a fresh worker must resume from the newest complete checkpoint and finish."""
    result = report.FaultResult(model_type.value, "sigkill mid-save")
    job_id = f"fault-kill-{model_type.value}"
    queue = make_queue(run.stack, "loraq-acceptance-kill")
    send(run.stack, queue, request_body(model_type, job_id, urls, run.stack, FAULT_EPOCHS))
    # A dead worker's message comes back after the visibility timeout: keep it short.
    first = run.worker("kill-first", queue, LORAQ_VISIBILITY_TIMEOUT="10")
    job = run.volume / "jobs" / job_id
    log, config = job / "logs" / "train.log", str(job / "config" / "train.toml")

    def saves() -> list[str]:
        return SAVING.findall(log.read_text(errors="replace")) if log.is_file() else []

    # The second save: the first left a checkpoint to fall back on.
    if not wait_for(lambda: len(saves()) >= 2, run.deadline.share(0.6), poll_s=0.01):
        result.error = f"no second checkpoint save began in time ({saves()})"
        return result
    first.kill(signal.SIGKILL)
    for pid in trainer_pids(config):
        _kill(pid)
    result.detail["killed_during"] = saves()[1]
    first.wait(30)
    wait_for(lambda: not trainer_pids(config), 30)
    found = newest_checkpoint(job / "output")
    result.detail["newest_complete_at_kill"] = found.tag if found else None
    result.detail["save_finished_before_kill"] = bool(found and found.tag == saves()[1])
    before = len(run.journal(job_id))
    run.worker("kill-second", queue, LORAQ_VISIBILITY_TIMEOUT="10")
    if not wait_for(lambda: run.done(job_id), run.deadline.left() - 5, poll_s=1):
        result.error = "the resumed job did not finish in time"
        return result
    events = run.journal(job_id)
    after = report.steps_after(events, before)
    exit_cell, message = report.describe_exit(report.terminal(events))
    result.detail.update(exit=exit_cell, resumed_at=after[0] - 1 if after else None)
    expected = found.step if found else 0
    result.ok = exit_cell == "succeeded" and bool(after) and after[0] == expected + 1
    result.error = message
    return result


def sigterm_hand_back(run: Run, model_type: ModelType, urls: dict[str, str]) -> report.FaultResult:
    """SIGTERM mid-training: checkpoint via save_quit, job.interrupted, the message visible at
    once, exit 0; a second worker continues from that checkpoint's step."""
    result = report.FaultResult(model_type.value, "sigterm hand-back")
    job_id = f"fault-term-{model_type.value}"
    queue = make_queue(run.stack, "loraq-acceptance-term")
    send(run.stack, queue, request_body(model_type, job_id, urls, run.stack, FAULT_EPOCHS))
    first = run.worker("term-first", queue)

    def steps() -> list[int]:
        return report.steps_after(run.journal(job_id), 0)

    if not wait_for(lambda: max(steps(), default=0) >= 3, run.deadline.share(0.6), poll_s=0.1):
        result.error = "the job did not reach step 3 in time"
        return result
    first.kill(signal.SIGTERM)
    try:
        code = first.wait(90)
    except subprocess.TimeoutExpired:
        result.error = "the worker did not exit within 90 s of SIGTERM"
        return result
    events = run.journal(job_id)
    interrupted = [e for e in events if e["type"] == report.INTERRUPTED]
    visible = run.stack.client("sqs").get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    step = interrupted[-1]["data"].get("step") if interrupted else None
    result.detail.update(exit_code=code, interrupted_at=step, visible_at_once=visible == "1")
    run.worker("term-second", queue)
    if not wait_for(lambda: run.done(job_id), run.deadline.left() - 5, poll_s=1):
        result.error = "the continued job did not finish in time"
        return result
    events = run.journal(job_id)
    after = report.steps_after(events, _index_after(events, interrupted))
    exit_cell, message = report.describe_exit(report.terminal(events))
    result.detail.update(exit=exit_cell, continued_at=after[0] if after else None)
    result.ok = (
        code == 0
        and step is not None
        and visible == "1"
        and exit_cell == "succeeded"
        and bool(after)
        and after[0] == int(step) + 1
    )
    result.error = message
    return result


def _index_after(events: list[dict[str, Any]], marks: list[dict[str, Any]]) -> int:
    """The index just past the last of ``marks`` in ``events`` (0 without any)."""
    if not marks:
        return 0
    last = marks[-1].get("id")
    for index, event in enumerate(events):
        if event.get("id") == last:
            return index + 1
    return 0


def run_fault(
    target: Callable[[Run, ModelType, dict[str, str]], report.FaultResult],
    run: Run,
    model_type: ModelType,
    urls: dict[str, str],
    into: list[report.FaultResult],
) -> None:
    try:
        into.append(target(run, model_type, urls))
    except Exception:
        failed = report.FaultResult(model_type.value, target.__name__.replace("_", " "))
        failed.error = traceback.format_exc()
        into.append(failed)


# -- results -------------------------------------------------------------------------------------
def model_result(
    run: Run, model_type: ModelType, job_id: str, build: dict[str, Any] | None
) -> report.ModelResult:
    result = report.ModelResult(model_type.value, built=bool(build is None or build.get("ok")))
    if build is not None and not build.get("ok"):
        result.build_error = build.get("error")
        return result
    events = run.journal(job_id)
    if not events:
        return result
    end = report.terminal(events)
    result.exit, result.error = report.describe_exit(end)
    result.loraq_steps_per_s = report.steps_per_second(report.first_run_samples(events))
    steps = report.steps_after(events, 0)
    result.steps = max(steps) if steps else None
    if end is not None:
        result.wall_s = round(report.event_time(end) - report.event_time(events[0]), 1)
    ledger = JobStore(run.volume).load_ledger(job_id)
    if ledger is not None and StageName.TRAIN in ledger.stages:
        outputs = ledger.stage(StageName.TRAIN).outputs
        lora = outputs.get("lora_path")
        if lora and Path(str(lora)).is_file():
            result.lora_file = Path(str(lora)).name
            result.lora_tensors = safetensors_io.tensor_count(Path(str(lora)))
        if isinstance(outputs.get("final_step"), int):
            result.steps = outputs["final_step"]
    return result


def selected(only: str) -> list[ModelType]:
    names = [n.strip() for n in only.split(",") if n.strip()]
    return [ModelType(n) for n in names] if names else list(ModelType)


def main(args: argparse.Namespace) -> int:
    deadline = Deadline(args.deadline_s)
    work, out = Path(args.work), Path(args.out)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    machine = json.loads((work / STAGE_ONE).read_text()) if (work / STAGE_ONE).is_file() else {}
    types = selected(args.only)
    fault_type = ModelType(args.fault_model)
    to_build = [t for t in types if not spec_for(t).builtin]
    if not args.skip_faults and fault_type not in to_build and not spec_for(fault_type).builtin:
        to_build.append(fault_type)
    print(f"== building {', '.join(t.value for t in to_build)}", flush=True)
    builds = build_all(to_build, work, min(deadline.share(0.4), 240))
    for name, entry in builds.items():
        print(f"   {name}: {'ok' if entry.get('ok') else 'FAILED'} {entry.get('seconds', '')} s")
    stack = start_local_stack()
    os.environ.update(stack.env())
    run = Run(work, stack, deadline)
    results: list[report.ModelResult] = []
    faults: list[report.FaultResult] = []
    try:
        results, faults = _jobs(run, types, fault_type, builds, args)
    finally:
        run.stop_all()
        stack.stop()
    meta = {"machine": machine, "builds": builds, "deadline_left_s": round(deadline.left())}
    meta["stand_ins"] = machine.get("stand_ins", [])
    print(report.render_table(results, faults), flush=True)
    body = report.to_json(results, faults, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "acceptance.json").write_text(json.dumps(body, indent=2, default=str))
    pack_logs(work, out / "logs.tar.xz")
    return 0 if report.passed(results, faults) else 1


LOG_LIMIT_BYTES = 8 * 1024 * 1024  # what comes back from the device is capped at 16 MB a file


def pack_logs(work: Path, target: Path) -> None:
    """Every worker, build, trainer and bare log, last bytes first when one is huge."""
    logs = sorted(
        [
            *(work / "logs").glob("*.log"),
            *(work / "volume" / "jobs").glob("*/logs/*.log"),
            *(work / "bare").glob("*/train.log"),
        ]
    )
    with tarfile.open(target, "w:xz") as archive:
        for log in logs:
            data = log.read_bytes()[-LOG_LIMIT_BYTES:]
            info = tarfile.TarInfo(str(log.relative_to(work)))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _jobs(
    run: Run,
    types: list[ModelType],
    fault_type: ModelType,
    builds: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> tuple[list[report.ModelResult], list[report.FaultResult]]:
    urls = _datasets(run, types)
    runnable = [t for t in types if spec_for(t).builtin or builds.get(t.value, {}).get("ok")]
    job_ids = {t: f"accept-{t.value}" for t in types}
    for model_type in runnable:
        body = request_body(model_type, job_ids[model_type], urls, run.stack, EPOCHS)
        send(run.stack, run.stack.queue_url, body)
        # One attempt: a failure is reported at once instead of retried with backoff.
        run.worker(f"matrix-{model_type.value}", run.stack.queue_url, LORAQ_MAX_RECEIVES="1")
    faults: list[report.FaultResult] = []
    fault_ok = spec_for(fault_type).builtin or builds.get(fault_type.value, {}).get("ok")
    threads = (
        [] if args.skip_faults or not fault_ok else _start_faults(run, fault_type, urls, faults)
    )
    bare = _await_jobs(run, {t: job_ids[t] for t in runnable}, skip_bare=args.skip_bare)
    for thread in threads:
        thread.join(timeout=max(1.0, run.deadline.left()))
    results = [model_result(run, t, job_ids[t], builds.get(t.value)) for t in types]
    _merge(results, bare, faults)
    return results, faults


def _datasets(run: Run, types: list[ModelType]) -> dict[str, str]:
    urls = {"images": upload(run.stack, "acceptance/images.zip", image_dataset_zip(IMAGES, 64))}
    if any(spec_for(t).videos_only for t in types):
        urls["videos"] = upload(run.stack, "acceptance/videos.zip", videos_zip(IMAGES))
    return urls


def _start_faults(
    run: Run, fault_type: ModelType, urls: dict[str, str], into: list[report.FaultResult]
) -> list[threading.Thread]:
    threads = []
    for target in (sigkill_mid_save, sigterm_hand_back):
        thread = threading.Thread(
            target=run_fault, args=(target, run, fault_type, urls, into), daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads


def _merge(
    results: list[report.ModelResult],
    bare: dict[ModelType, BareRun],
    faults: list[report.FaultResult],
) -> None:
    """The bare runs' rates and the SIGKILL resume's step onto each model's row."""
    for result in results:
        if (one := bare.get(ModelType(result.model_type))) is not None:
            result.bare_steps_per_s = report.steps_per_second(one.samples)
            result.bare_exit = one.process.poll()
        for fault in faults:
            if fault.kind == "sigkill mid-save" and fault.model_type == result.model_type:
                result.resumed_step = fault.detail.get("resumed_at")


def _await_jobs(
    run: Run, job_ids: dict[ModelType, str], *, skip_bare: bool
) -> dict[ModelType, BareRun]:
    """Until every job is done (or the deadline), starting each bare run once its job is."""
    bare: dict[ModelType, BareRun] = {}
    pending = dict(job_ids)
    while pending and run.deadline.left() > 5:
        for model_type, job_id in list(pending.items()):
            end = report.terminal(run.journal(job_id))
            if end is None:
                continue
            del pending[model_type]
            print(f"   job {job_id}: {end['type']}", flush=True)
            if not skip_bare and end["type"] == "loraq.job.succeeded":
                bare[model_type] = start_bare(run, model_type, job_id)
        time.sleep(1)
    for one in bare.values():
        try:
            one.process.wait(timeout=max(1.0, run.deadline.left() - 3))
        except subprocess.TimeoutExpired:
            os.killpg(one.process.pid, signal.SIGKILL)
    return bare
