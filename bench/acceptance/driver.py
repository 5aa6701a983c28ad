"""``run``, first half: the machine checked and set up with the standard library alone.

The GPU image has python3 and maybe a CUDA torch, and none of loraq's dependencies: so this
module imports nothing beyond the standard library (and the stdlib-only ``prepare`` and
``shims``) until the carried wheels are installed, then hands over to ``matrix.py`` in a
process whose ``PYTHONPATH`` holds them. Every check prints what is missing in words and stops
before anything is started, rather than failing in the middle with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from bench.acceptance import prepare, shims

REPO = Path(__file__).resolve().parents[2]
CARRIED = REPO / prepare.OUT_DIR
MIN_PYTHON = (3, 11)  # loraq's own floor; the machine's python3 may be older
MIN_FREE_BYTES = 20 * 1024**3  # real writes are ~5 GB; the rest are sparse, plus caches
STAGE_ONE = "machine.json"
# Module sets whose import is checked before any job: loraq's worker and local stack, and what
# train.py and the five model modules import (as the Dockerfile's check does, minus flash_attn).
LORAQ_IMPORTS = "import loraq.app, infra.local_stack, tests.faults.harness, moto, av"
DP_IMPORTS = (
    "import sys; sys.path.append('submodules/ComfyUI'); "
    "import torchaudio, wandb, toml, deepspeed, multiprocess, torch.utils.tensorboard; "
    "import utils.dataset, utils.common, utils.saver, utils.isolate_rng, utils.patches; "
    "import utils.unsloth_utils, utils.pipeline; "
    "import models.flux, models.sdxl, models.wan.wan, models.qwen_image, models.z_image"
)


def _python_facts() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "executable": sys.executable}


def _torch_facts() -> dict[str, Any]:
    """torch as the trainer will see it, asked in a child so a broken CUDA cannot hang us."""
    probe = (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({"
        "'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': c, "
        "'gpu': torch.cuda.get_device_name(0) if c else None, "
        "'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)"
        " if c else None}))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return {"torch": None, "torch_error": "importing torch took over 120 s"}
    if done.returncode != 0:
        return {"torch": None, "torch_error": done.stderr.strip().splitlines()[-1:]}
    facts: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return facts


def check_machine(work: Path) -> tuple[dict[str, Any], list[str]]:
    """(facts, problems): each problem is a sentence saying what is missing and what to do."""
    facts = {**_python_facts(), **_torch_facts()}
    problems = []
    if tuple(sys.version_info[:2]) < MIN_PYTHON:
        problems.append(f"python {facts['python']}: loraq needs 3.11 or newer")
    if facts.get("torch") is None:
        problems.append(f"no torch importable by {sys.executable}: {facts.get('torch_error')}")
    elif not facts.get("cuda_available"):
        problems.append(f"torch {facts['torch']} sees no CUDA device: this run needs one GPU")
    for name in (prepare.DP_ARCHIVE, prepare.WHEELS_ARCHIVE, prepare.MANIFEST):
        if not (CARRIED / name).is_file():
            problems.append(
                f"{prepare.OUT_DIR}/{name} is missing: run `bench/gpu_acceptance.py prepare` on a "
                f"machine with PyPI and carry `{prepare.OUT_DIR}`"
            )
    if (CARRIED / prepare.MANIFEST).is_file():
        manifest = json.loads((CARRIED / prepare.MANIFEST).read_text())
        facts["manifest_missing"] = manifest.get("missing", [])
        problems += [f"prepare could not pack {m}" for m in manifest.get("missing", [])]
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    facts["work_free_gib"] = round(free / 2**30, 1)
    if free < MIN_FREE_BYTES:
        problems.append(f"{work} has {free / 2**30:.1f} GiB free; the run needs 20")
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True, timeout=60)
        facts["nvidia_smi"] = smi.stdout.strip()
    return facts, problems


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def install(work: Path) -> dict[str, Any]:
    """The carried wheels into ``work/site`` (once per manifest), the stand-ins beside them,
    and a fresh diffusion-pipe tree (its Qwen configs are rewritten by every build)."""
    site, stamp = work / "site", work / "site.manifest"
    manifest = (CARRIED / prepare.MANIFEST).read_text()
    started = time.monotonic()
    if not (stamp.is_file() and stamp.read_text() == manifest):
        shutil.rmtree(site, ignore_errors=True)
        shutil.rmtree(work / "wheels", ignore_errors=True)
        _extract(CARRIED / prepare.WHEELS_ARCHIVE, work)
        wheels = sorted(str(p) for p in (work / "wheels").glob("*.whl"))
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
        pip += ["--no-compile", "--no-cache-dir", "--target", str(site), *wheels]
        subprocess.run(pip, check=True)
        stamp.write_text(manifest)
    shims.write_shims(site)
    shutil.rmtree(work / "diffusion-pipe", ignore_errors=True)
    _extract(CARRIED / prepare.DP_ARCHIVE, work)
    return {"install_s": round(time.monotonic() - started, 1), "stand_ins": list(shims.SHIMS)}


def run_env(work: Path) -> dict[str, str]:
    """What every process of the run gets: the carried site first, the offline switches."""
    site = work / "site"
    path = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PATH": f"{site / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        # DeepSpeed was built on a machine without CUDA: name the accelerator instead of
        # letting it read what its build recorded.
        "DS_ACCELERATOR": "cuda",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def import_checks(work: Path, env: dict[str, str]) -> dict[str, str | None]:
    """None where the imports work, else the error's last lines."""
    results: dict[str, str | None] = {}
    for name, code, cwd in (
        ("loraq", LORAQ_IMPORTS, REPO),
        ("diffusion-pipe", DP_IMPORTS, work / "diffusion-pipe"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
        )
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        results[name] = None if done.returncode == 0 else tail
    return results


def _print_facts(title: str, facts: dict[str, Any]) -> None:
    print(f"== {title}", flush=True)
    for key, value in facts.items():
        print(f"   {key}: {value}", flush=True)


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    facts, problems = check_machine(work)
    _print_facts("machine", facts)
    if problems:
        for problem in problems:
            print(f"MISSING: {problem}", flush=True)
        record = {"meta": {"machine": facts, "fatal": problems}, "models": [], "faults": []}
        (out / "acceptance.json").write_text(json.dumps(record, indent=2))
        return 2
    facts.update(install(work))
    env = run_env(work)
    imports = import_checks(work, env)
    facts["imports"] = imports
    _print_facts("setup", {k: facts[k] for k in ("install_s", "stand_ins", "imports")})
    if imports["loraq"] is not None:
        print(f"MISSING: loraq's worker does not import:\n{imports['loraq']}", flush=True)
        (out / "acceptance.json").write_text(json.dumps({"meta": {"machine": facts}}, indent=2))
        return 2
    (work / STAGE_ONE).write_text(json.dumps(facts, indent=2))
    left = args.deadline_s - (time.monotonic() - started)
    command = [sys.executable, str(REPO / "bench/gpu_acceptance.py"), "matrix"]
    command += ["--work", str(work), "--out", str(out), "--deadline-s", f"{left:.0f}"]
    command += ["--only", args.only, "--fault-model", args.fault_model]
    command += ["--skip-faults"] if args.skip_faults else []
    command += ["--skip-bare"] if args.skip_bare else []
    try:
        return subprocess.run(command, env=env, cwd=REPO, timeout=left + 60).returncode
    except subprocess.TimeoutExpired:
        print("the matrix outlived its deadline by a minute and was stopped", flush=True)
        return 3


def build_group(args: argparse.Namespace) -> int:
    """One group of model types built in this process (``build`` subcommand, site on path)."""
    import traceback

    from bench.acceptance import builders, layout
    from contracts.enums import ModelType

    work = Path(args.work)
    models = work / "volume" / "models"
    ctx = builders.BuildContext(
        dp_dir=Path(args.dp_dir),
        hub_cache=layout.hub_cache_for(models / "any"),
        device=args.device,
        shared_dir=work / "shared",
    )
    results = {}
    for name in args.types.split(","):
        began = time.monotonic()
        plan = layout.plan_for(ModelType(name))
        entry: dict[str, Any] = {"ok": False}
        try:
            builders.build_model(plan, models / name, ctx)
            entry["verified"] = builders.verify_model(plan, models / name, ctx)
            entry["ok"] = True
        except Exception:
            entry["error"] = traceback.format_exc()
        entry["seconds"] = round(time.monotonic() - began, 1)
        entry["notes"] = list(ctx.notes)
        ctx.notes.clear()
        results[name] = entry
        print(f"built {name}: {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']} s")
    report = work / "build" / f"{args.types.split(',')[0]}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1
