"""The worker image held against what diffusion-pipe imports (issue 11).

An image that builds can still lack a package that upstream imports at module top level; every
job of that model type then dies with ModuleNotFoundError before its first step (torchaudio was
such a package: models/base.py imports it, requirements.txt does not list it). These checks read
``stages/trainer/data/upstream_imports.json``, the facts read from diffusion-pipe's source at the
pinned commit, and the Dockerfile and its constraints file as text: no Docker, no network. Each
Dockerfile check is a function returning what it found wrong, so the last tests can show every one
of them catching the old Dockerfile's mistakes.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from contracts.enums import ModelType

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "infra" / "deploy" / "diffusion-pipe-constraints.txt"
CONSTRAINTS_SOURCE = "infra/deploy/diffusion-pipe-constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
CHECKOUT = "/opt/diffusion-pipe"

# Installed from the CUDA index by version ARG, never through the constraints file.
TORCH_FAMILY_ARGS = {
    "torch": "TORCH_VERSION",
    "torchvision": "TORCHVISION_VERSION",
    "torchaudio": "TORCHAUDIO_VERSION",
}
ARG_PINNED = {**TORCH_FAMILY_ARGS, "flash-attn": "FLASH_ATTN_VERSION"}


# --------------------------------------------------------------------------------------------
# Facts and constraints


@cache
def _facts() -> dict[str, Any]:
    data = resources.files("stages.trainer") / "data" / "upstream_imports.json"
    facts: dict[str, Any] = json.loads(data.read_text())
    return facts


def _dist(import_name: str) -> str | None:
    dist: str | None = _facts()["import_names"][import_name]
    return None if dist is None else canonicalize_name(dist)


def _required_distributions() -> dict[str, str]:
    """Each distribution a model module cannot import without, with the first upstream file:line
    that needs it, so a failure says where upstream would have died."""
    required: dict[str, str] = {}
    for module in _facts()["modules"]:
        for imp in module["imports"]:
            if "optional" in imp:
                continue
            dist = _dist(imp["package"])
            assert dist, f"{module['file']}:{imp['line']} imports {imp['package']}: no distribution"
            required.setdefault(dist, f"{module['file']}:{imp['line']}")
    for need in _facts()["runtime_requirements"]:
        required.setdefault(canonicalize_name(need["distribution"]), need["asserted_at"])
    return required


def _requirement_lines() -> list[tuple[str, Requirement]]:
    """Every requirement line the Dockerfile installs, named by file:line for the failure."""
    facts = _facts()
    lines = [
        (f"{facts['requirements']['file']}:{r['line']}", Requirement(r["requirement"]))
        for r in facts["requirements"]["lines"]
    ]
    comfy = facts["comfyui_requirements"]
    lines += [
        (f"{comfy['file']}:{r['line']}", Requirement(r["requirement"]))
        for r in comfy["lines"]
        if r["installed"]
    ]
    return lines


def _pins(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in text.splitlines():
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraint {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


# --------------------------------------------------------------------------------------------
# Dockerfile, as text: continuations, comments, stages, SHELL, WORKDIR, ARG defaults and the
# `pip install` commands inside RUN. Enough grammar for these checks, not a general parser.


@dataclass
class Run:
    stage: int
    shell: list[str]
    workdir: str
    command: str  # ARG defaults substituted, RUN flags (--mount=...) removed


@dataclass
class PipInstall:
    run: int  # index into Dockerfile.runs
    constraints: list[str] = field(default_factory=list)
    requirement_files: list[str] = field(default_factory=list)  # absolute paths
    index_url: str | None = None
    targets: list[str] = field(default_factory=list)  # requirement specs, URLs, paths


@dataclass
class Dockerfile:
    instructions: list[tuple[int, str, str]]  # (stage, KEYWORD, arguments)
    args: dict[str, str]
    runs: list[Run]
    copies: dict[str, str]  # destination -> source, for single-file COPY

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        instructions = _instructions(text)
        args: dict[str, str] = {}
        for _, keyword, rest in instructions:
            name, eq, value = rest.partition("=")
            if keyword == "ARG" and eq:
                args.setdefault(name.strip(), value.strip().strip('"'))
        runs: list[Run] = []
        copies: dict[str, str] = {}
        shell, workdir = ["/bin/sh", "-c"], "/"
        last_stage = -1
        for stage, keyword, rest in instructions:
            if stage != last_stage:  # each stage starts from its base image's shell and workdir
                shell, workdir, last_stage = ["/bin/sh", "-c"], "/", stage
            if keyword == "SHELL":
                shell = json.loads(rest)
            elif keyword == "WORKDIR":
                workdir = str(PurePosixPath(workdir, _substitute(rest, args)))
            elif keyword == "COPY":
                tokens = [t for t in shlex.split(rest) if not t.startswith("--")]
                if len(tokens) == 2:
                    copies[tokens[1]] = tokens[0]
            elif keyword == "RUN":
                command = re.sub(r"^(--\S+\s+)+", "", rest)
                runs.append(Run(stage, shell, workdir, _substitute(command, args)))
        return cls(instructions, args, runs, copies)

    def pip_installs(self) -> list[PipInstall]:
        found = []
        for i, run in enumerate(self.runs):
            # Shell variables the RUN sets itself (wheel="flash_attn-...") name what it installs.
            assigned = re.findall(r'\b([a-z_][a-z0-9_]*)="([^"]*)"', run.command)
            local = {name: value for name, value in assigned if "$(" not in value}
            command = _substitute(run.command, local)
            for segment in _segments(command):
                found += _pip_install(segment, i, run.workdir)
        return found


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """Logical lines joined as BuildKit joins them: the escape and the newline go, a continuation
    line keeps its leading whitespace, comment and blank lines inside a continuation are dropped."""
    logical: list[str] = []
    current: str | None = None
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        line = raw.rstrip() if current is not None else raw.strip()
        continued = line.endswith("\\")
        current = (current or "") + (line[:-1] if continued else line)
        if not continued:
            logical.append(current)
            current = None
    assert current is None, "the Dockerfile ends inside a line continuation"
    out: list[tuple[int, str, str]] = []
    stage = 0
    for line in logical:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append((stage, keyword.upper(), rest.strip()))
    return out


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
        lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


def _unquoted(command: str) -> str:
    """The command less its single-quoted strings (grep patterns, python's quoted strings)."""
    return re.sub(r"'[^']*'", "''", command)


def _segments(command: str) -> list[str]:
    return re.split(r"&&|\|\||;|\|", _unquoted(command))


def _pip_install(segment: str, run: int, workdir: str) -> list[PipInstall]:
    try:
        tokens = shlex.split(segment)
    except ValueError:
        return []
    for i, token in enumerate(tokens[:-1]):
        if token.endswith("pip") and tokens[i + 1] == "install":
            break
    else:
        return []
    found = PipInstall(run)
    rest = iter(tokens[i + 2 :])
    for token in rest:
        if token in ("-c", "--constraint"):
            found.constraints.append(str(PurePosixPath(workdir, next(rest))))
        elif token in ("-r", "--requirement"):
            found.requirement_files.append(str(PurePosixPath(workdir, next(rest))))
        elif token in ("-i", "--index-url"):
            found.index_url = next(rest)
        elif not token.startswith("-"):
            found.targets.append(token)
    return [found]


def _target_name(target: str) -> str | None:
    """The distribution a pip target installs: a requirement spec or a wheel's URL."""
    if target.endswith(".whl"):
        return canonicalize_name(target.rsplit("/", 1)[-1].split("-", 1)[0])
    try:
        return canonicalize_name(Requirement(target).name)
    except ValueError:
        return None  # a local path such as /src


def _python_imports(command: str) -> set[str]:
    """Modules imported by the `python -c` code of a RUN."""
    tokens = shlex.split(command)
    imported: set[str] = set()
    for i, token in enumerate(tokens[:-1]):
        if token.endswith("python") and tokens[i + 1] == "-c" and i + 2 < len(tokens):
            for node in ast.walk(ast.parse(tokens[i + 2])):
                if isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
    return imported


@cache
def _dockerfile() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE.read_text())


# --------------------------------------------------------------------------------------------
# The checks: each returns what it found wrong, empty when the Dockerfile is right.


def piped_runs_without_pipefail(docker: Dockerfile) -> list[str]:
    """A pipe reports only its last command's status unless the shell runs with pipefail."""
    wrong = []
    for run in docker.runs:
        if not re.search(r"(?<!\|)\|(?!\|)", _unquoted(run.command)):
            continue
        shell = run.shell
        under_pipefail = any(
            shell[i : i + 2] == ["-o", "pipefail"] for i in range(len(shell) - 1)
        ) or re.search(r"\bset -[a-z]*o pipefail\b|\bset -o pipefail\b", run.command)
        if not under_pipefail:
            wrong.append(run.command[:100])
    return wrong


def runs_with_cd(docker: Dockerfile) -> list[str]:
    """A `cd` inside RUN hides where the next commands run; WORKDIR says it once, visibly."""
    pattern = re.compile(r"(?:^|[;&|(])\s*cd(?:\s|$)")
    return [run.command[:100] for run in docker.runs if pattern.search(_unquoted(run.command))]


def hidden_failures(docker: Dockerfile) -> list[str]:
    """`cmd || echo ...` (or `|| true`, `|| :`) turns a failed step into a passing one."""
    pattern = re.compile(r"\|\|\s*(?:echo|printf|true|:|exit\s+0)(?:\s|$|;)")
    return [run.command[:100] for run in docker.runs if pattern.search(_unquoted(run.command))]


def flash_attn_with_fallback(docker: Dockerfile) -> list[str]:
    """flash-attn must install or fail the build: a RUN that installs it has no `||` at all."""
    installs = [p for p in docker.pip_installs() if "flash-attn" in map(_target_name, p.targets)]
    if not installs:
        return ["flash-attn is never installed"]
    return [
        docker.runs[p.run].command[:100]
        for p in installs
        if "||" in _unquoted(docker.runs[p.run].command)
    ]


def installed_distributions(docker: Dockerfile) -> set[str]:
    """Named in a pip install, or brought in by a requirements file the facts record."""
    facts = _facts()
    upstream = f"{CHECKOUT}/{facts['requirements']['file']}"
    comfy_file = facts["comfyui_requirements"]["file"]
    derived = {  # files a RUN writes from ComfyUI's requirements.txt
        str(PurePosixPath(run.workdir, m.group(1)))
        for run in docker.runs
        if comfy_file in run.command
        for m in re.finditer(r">\s*([^\s;|&]+)", run.command)
    }
    installed: set[str] = set()
    for pip in docker.pip_installs():
        installed |= {n for n in map(_target_name, pip.targets) if n}
        for path in pip.requirement_files:
            reqs: list[dict[str, Any]] = []
            if path == upstream:
                reqs = facts["requirements"]["lines"]
            elif path in derived:
                reqs = [r for r in facts["comfyui_requirements"]["lines"] if r["installed"]]
            installed |= {canonicalize_name(Requirement(r["requirement"]).name) for r in reqs}
    for child, via in facts["installed_with"].items():
        if canonicalize_name(via["by"]) in installed:
            installed.add(canonicalize_name(child))
    return installed


def missing_distributions(docker: Dockerfile) -> list[str]:
    installed = installed_distributions(docker)
    return sorted(
        f"{dist} (needed at {where})"
        for dist, where in _required_distributions().items()
        if dist not in installed
    )


def torchaudio_mismatch(docker: Dockerfile) -> list[str]:
    """torchaudio's wheels require torch at their own version: 2.8.0 <-> torch==2.8.0."""
    wrong = []
    torch_v, audio_v = docker.args.get("TORCH_VERSION"), docker.args.get("TORCHAUDIO_VERSION")
    if audio_v is None or audio_v != torch_v:
        wrong.append(f"TORCHAUDIO_VERSION={audio_v} but TORCH_VERSION={torch_v}")
    together = [
        p
        for p in docker.pip_installs()
        if {f"torch=={torch_v}", f"torchaudio=={audio_v}"} <= set(p.targets)
        and p.index_url == docker.args.get("TORCH_INDEX_URL")
    ]
    if not together:
        wrong.append("torch and torchaudio are not installed in one pip call from TORCH_INDEX_URL")
    frozen = [r for r in docker.runs if re.search(r">\s*/opt/torch-constraints\.txt", r.command)]
    if not any("torchaudio" in r.command for r in frozen):
        wrong.append("/opt/torch-constraints.txt does not pin torchaudio")
    return wrong


def unconstrained_requirements(docker: Dockerfile) -> list[str]:
    """diffusion-pipe's requirements are installed with the committed constraints file."""
    copied = [dest for dest, src in docker.copies.items() if src == CONSTRAINTS_SOURCE]
    upstream = f"{CHECKOUT}/{_facts()['requirements']['file']}"
    installs = [p for p in docker.pip_installs() if upstream in p.requirement_files]
    if not installs:
        return [f"{upstream} is never installed"]
    return [
        f"{upstream} installed without -c {CONSTRAINTS_SOURCE}"
        for p in installs
        if not set(p.constraints) & set(copied)
    ]


def smoke_test_gaps(docker: Dockerfile) -> list[str]:
    """An import-only check from the checkout, after the installs it checks."""
    facts = _facts()
    wanted = {
        path.removesuffix(".py").replace("/", ".")
        for path in facts["entry_modules"]
        if path != "train.py"  # parses its arguments at import: its imports stand in for it
    }
    wanted |= {t["module"] for t in facts["train_imports"]}
    names = {v: k for k, v in facts["import_names"].items() if v}
    wanted |= {names[need["distribution"]] for need in facts["runtime_requirements"]}
    upstream = f"{CHECKOUT}/{facts['requirements']['file']}"
    checked = [
        p.run
        for p in docker.pip_installs()
        if upstream in p.requirement_files or "flash-attn" in map(_target_name, p.targets)
    ]
    after = max(checked, default=len(docker.runs))
    for i, run in enumerate(docker.runs):
        if i > after and run.workdir == CHECKOUT and wanted <= _python_imports(run.command):
            return []
    return [f"no RUN in {CHECKOUT} after the installs imports all of {sorted(wanted)}"]


Check = Callable[[Dockerfile], list[str]]

CHECKS: list[Check] = [
    piped_runs_without_pipefail,
    runs_with_cd,
    hidden_failures,
    flash_attn_with_fallback,
    missing_distributions,
    torchaudio_mismatch,
    unconstrained_requirements,
    smoke_test_gaps,
]


# --------------------------------------------------------------------------------------------
# The facts


def test_facts_were_read_at_the_commit_the_dockerfile_pins() -> None:
    """GIVEN the facts file and the Dockerfile's DIFFUSION_PIPE_COMMIT ARG
    WHEN the commits are compared
    THEN they are the same full sha, and the constraints file says it was resolved for it too:
    bumping the commit without re-reading upstream fails here."""
    commit = _dockerfile().args["DIFFUSION_PIPE_COMMIT"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert _facts()["diffusion_pipe_commit"] == commit
    assert commit in CONSTRAINTS.read_text()


def test_facts_cover_loraqs_model_types_and_the_known_gaps() -> None:
    """GIVEN the facts file
    WHEN its entry modules and required imports are read
    THEN every loraq model type but the built-in tiny one has its upstream module, torchaudio is
    required (models/base.py:12) though requirements.txt lacks it, and flash-attn is a runtime
    requirement of the three Wan types: the facts the image checks below rely on."""
    facts = _facts()
    covered = {t.strip() for v in facts["entry_modules"].values() for t in v.split(",")}
    assert {m.value for m in ModelType if m is not ModelType.TINY} <= covered

    required = _required_distributions()
    assert required["torchaudio"] == "models/base.py:12"
    listed = {
        canonicalize_name(Requirement(r["requirement"]).name)
        for r in facts["requirements"]["lines"]
    }
    assert "torchaudio" not in listed

    (flash,) = facts["runtime_requirements"]
    assert flash["distribution"] == "flash-attn"
    assert set(flash["model_types"]) == {"wan13", "wan14b_t2v", "wan14b_i2v"}
    assert flash["asserted_at"] == "models/wan/attention.py:107"


# --------------------------------------------------------------------------------------------
# The Dockerfile against the facts


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_dockerfile_passes(check: Check) -> None:
    """GIVEN the Dockerfile
    WHEN a check runs on it (pipefail, no cd, no hidden failure, flash-attn without fallback,
    every required distribution installed, torchaudio matched to torch, constrained
    requirements, an import smoke test)
    THEN it finds nothing wrong."""
    assert check(_dockerfile()) == []


def test_every_requirement_line_is_pinned() -> None:
    """GIVEN every line of diffusion-pipe's and ComfyUI's requirements that the image installs
    WHEN each is looked up in the constraints file (the torch trio: in the version ARGs)
    THEN it is pinned to a version the line itself allows (deepspeed==0.18.4 stays 0.18.4,
    diffusers>=0.35.1 is not pinned below it)."""
    pins = _pins(CONSTRAINTS.read_text())
    args = _dockerfile().args
    lines = _requirement_lines()
    assert len(lines) > 30
    for where, req in lines:
        name = canonicalize_name(req.name)
        pin = (
            Version(args[TORCH_FAMILY_ARGS[name]]) if name in TORCH_FAMILY_ARGS else pins.get(name)
        )
        assert pin is not None, f"{where} {req} has no pin in {CONSTRAINTS_SOURCE}"
        assert req.specifier.contains(pin, prereleases=True), f"{where} {req} pinned to {pin}"


def test_every_required_distribution_is_pinned() -> None:
    """GIVEN every distribution upstream's model modules need at import or run time
    WHEN each is looked up in the constraints file or the version ARGs
    THEN it is pinned, so loraq's own `pip install` (wider ranges) cannot move it."""
    pins = _pins(CONSTRAINTS.read_text())
    args = _dockerfile().args
    unpinned = [
        f"{dist} ({where})"
        for dist, where in _required_distributions().items()
        if dist not in pins and not args.get(ARG_PINNED.get(dist, ""))
    ]
    assert unpinned == []


def test_installed_with_facts_hold_at_the_pinned_versions() -> None:
    """GIVEN the facts' installed_with entries (multiprocess comes with datasets, ...)
    WHEN each parent's pinned version is compared with the version the fact was read at
    THEN they agree: a bumped parent needs its Requires-Dist read again."""
    pins = _pins(CONSTRAINTS.read_text())
    args = _dockerfile().args
    for child, via in _facts()["installed_with"].items():
        parent = canonicalize_name(via["by"])
        pinned = args[ARG_PINNED[parent]] if parent in ARG_PINNED else str(pins[parent])
        assert pinned == via["at"], f"{child} via {parent}: read at {via['at']}, pinned {pinned}"
        assert canonicalize_name(Requirement(via["requires_dist"]).name) == canonicalize_name(child)


def test_constraints_do_not_contradict_pyproject() -> None:
    """GIVEN loraq's dependency ranges and the constraints the image installs loraq under
    WHEN each shared package's pin is checked against loraq's range
    THEN the pin is inside it (else `pip install /src` would fail in the image)."""
    deps = [Requirement(d) for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]
    pins = _pins(CONSTRAINTS.read_text())
    checked = 0
    for req in deps:
        pin = pins.get(canonicalize_name(req.name))
        if pin is not None:
            assert req.specifier.contains(pin, prereleases=True), f"{req} vs pin {pin}"
            checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------------------------
# Each check can fail: the old Dockerfile's mistakes, one line each


OLD_MISTAKES: dict[Check, str] = {
    piped_runs_without_pipefail: (
        "FROM x\nRUN pip list --format=freeze | grep -iE '^(torch|triton)==' > /opt/c.txt\n"
    ),
    runs_with_cd: (
        "FROM x\nRUN set -eux; \\\n    cd /opt/diffusion-pipe; \\\n"
        "    pip install -r requirements.txt\n"
    ),
    hidden_failures: 'FROM x\nRUN pip check || echo "pip check reported conflicts (see above)"\n',
    flash_attn_with_fallback: (
        "FROM x\nRUN pip install -c /opt/torch-constraints.txt \\\n"
        '    "https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/'
        'flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl" \\\n'
        '    || echo "flash-attn skipped"\n'
    ),
    missing_distributions: (
        "FROM x\nARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128\n"
        'RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.8.0 torchvision==0.23.0\n'
        "WORKDIR /opt/diffusion-pipe\n"
        "RUN pip install -c /opt/torch-constraints.txt -r requirements.txt\n"
    ),
    torchaudio_mismatch: (
        "FROM x\nARG TORCH_VERSION=2.8.0\nARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128\n"
        'RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"\n'
    ),
    unconstrained_requirements: (
        "FROM x\nWORKDIR /opt/diffusion-pipe\n"
        "RUN pip install -c /opt/torch-constraints.txt -r requirements.txt\n"
    ),
    smoke_test_gaps: (
        "FROM x\nWORKDIR /opt/diffusion-pipe\nRUN pip install -r requirements.txt\n"
        'RUN python -c "import torch, deepspeed, loraq"\n'
    ),
}


def test_every_check_has_an_old_mistake() -> None:
    assert set(OLD_MISTAKES) == set(CHECKS)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_check_catches_the_old_mistake(check: Check) -> None:
    """GIVEN a Dockerfile fragment as the old Dockerfile wrote it (a pipe without pipefail,
    `cd` in RUN, `|| echo`, flash-attn's `|| echo skipped`, no torchaudio, requirements without
    the constraints file, a smoke test of loraq only)
    WHEN the matching check runs on it
    THEN it reports the mistake: none of the checks above can pass by finding nothing."""
    assert check(Dockerfile.parse(OLD_MISTAKES[check])) != []


def test_the_old_installs_lack_torchaudio() -> None:
    """GIVEN the old Dockerfile's installs: torch and torchvision from the CUDA index, then
    diffusion-pipe's requirements.txt
    WHEN the required distributions are checked
    THEN torchaudio is missing, needed at models/base.py:12: the finding of issue 11."""
    missing = missing_distributions(Dockerfile.parse(OLD_MISTAKES[missing_distributions]))
    assert "torchaudio (needed at models/base.py:12)" in missing
