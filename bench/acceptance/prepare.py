"""``prepare``: what a bare GPU machine with no network lacks, packed to travel with the tree.

Runs here (CPU, with PyPI and the repository mirrors), writes ``.acceptance/`` (git-ignored):
- ``diffusion-pipe.tar.xz``: diffusion-pipe at the pinned commit, and the submodules the seven
  model types import (ComfyUI: models/base.py, utils/dataset.py, utils/patches.py; HunyuanVideo:
  utils/patches.py) at the commits its gitlinks name, taken from any mirrored repository that
  holds those commits (a fork holds the same objects: a commit id names its whole tree). Tests,
  CI files and media are left out; blobs a mirror lacks are listed in the manifest.
- ``wheels.tar.xz``: the wheels the GPU image lacks, for CPython 3.12 manylinux x86_64, each
  re-zipped uncompressed (same files and RECORD) so that one xz stream compresses across all of
  them: about a quarter smaller than the wheels' own deflate, which is what makes PyAV's 35 MB
  fit. botocore keeps the service data of s3, sqs, sns, sts and iam only (the local stack's).
- ``manifest.json``: every commit, source, wheel and size, and what is missing.
All of it within the device's 64 MiB, with the working tree (``budget`` below).
"""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath

DP_REPO = "tdrussell/diffusion-pipe"
DP_COMMIT = "8f83dbf25d03219df705570ec03e62be04bc402f"
MIRRORS = Path("/work/.mirror")
OUT_DIR = ".acceptance"
DP_ARCHIVE = "diffusion-pipe.tar.xz"
WHEELS_ARCHIVE = "wheels.tar.xz"
MANIFEST = "manifest.json"
# Raw downloads stay outside the tree: only the packed archives travel.
DOWNLOAD_CACHE = Path.home() / ".cache" / "loraq-acceptance" / "wheels"
BUDGET_BYTES = 64 * 1024 * 1024
# The device's transfer limit covers the working tree too; what is left for .acceptance/.
TREE_MARGIN_BYTES = 4 * 1024 * 1024
NEEDED_SUBMODULES = ("submodules/ComfyUI", "submodules/HunyuanVideo")
CONSTRAINTS = Path("infra/deploy/diffusion-pipe-constraints.txt")

# Never needed to train: tests, CI, docs media, ComfyUI's server-side nodes and UI assets.
_SKIP_DIRS = frozenset(
    {
        ".github",
        ".ci",
        "tests",
        "tests-unit",
        "test",
        "script_examples",
        "blueprints",
        "custom_nodes",
        "input",
        "output",
        "assets",
        "comfy_api_nodes",
        "comfy_extras",
        "alembic_db",
        "api_server",
    }
)
_SKIP_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".webp",
        ".mp4",
        ".pdf",
        ".ico",
        ".svg",
        ".ttf",
        ".woff",
        ".woff2",
        ".wav",
        ".mp3",
        ".safetensors",
        ".ckpt",
        ".pt",
        ".bin",
    }
)
BOTOCORE_SERVICES = frozenset({"s3", "sqs", "sns", "sts", "iam"})


@dataclass(frozen=True)
class Wheel:
    name: str
    why: str
    # "venv": the version this checkout's tests run with; "constraints": the image's pin.
    pin_from: str = "venv"


# What the GPU image ('cuda', KINDS.md's package list) lacks, for the worker and for
# diffusion-pipe with the modules it imports for these seven model types.
WHEELS: tuple[Wheel, ...] = (
    Wheel("aiobotocore", "loraq: SQS, SNS, S3"),
    Wheel("aioitertools", "aiobotocore"),
    Wheel("botocore", "aiobotocore, boto3"),
    Wheel("jmespath", "botocore"),
    Wheel("boto3", "the local stack"),
    Wheel("s3transfer", "boto3"),
    Wheel("pydantic", "loraq contracts, deepspeed"),
    Wheel("pydantic-core", "pydantic"),
    Wheel("annotated-types", "pydantic"),
    Wheel("typing-inspection", "pydantic"),
    Wheel("pydantic-settings", "loraq settings"),
    Wheel("python-dotenv", "pydantic-settings"),
    Wheel("structlog", "loraq logging"),
    Wheel("tenacity", "loraq retries"),
    Wheel("toml", "loraq, diffusion-pipe"),
    Wheel("tomli-w", "loraq"),
    Wheel("moto", "the local stack"),
    Wheel("xmltodict", "moto"),
    Wheel("responses", "moto"),
    Wheel("flask", "moto's server"),
    Wheel("flask-cors", "moto's server"),
    Wheel("werkzeug", "flask"),
    Wheel("blinker", "flask"),
    Wheel("itsdangerous", "flask"),
    Wheel("cryptography", "moto"),
    Wheel("cffi", "cryptography"),
    Wheel("pycparser", "cffi"),
    Wheel("av", "loraq video checks, ComfyUI's video input", "constraints"),
    Wheel("deepspeed", "diffusion-pipe (built here from its sdist)", "constraints"),
    Wheel("hjson", "deepspeed", "constraints"),
    Wheel("diffusers", "diffusion-pipe", "constraints"),
    Wheel("importlib-metadata", "diffusers", "constraints"),
    Wheel("datasets", "diffusion-pipe's dataset cache", "constraints"),
    Wheel("dill", "datasets", "constraints"),
    Wheel("multiprocess", "datasets, train.py", "constraints"),
    Wheel("torch-optimi", "adamw_optimi, loraq's default optimizer", "constraints"),
    Wheel("easydict", "models/wan/configs.py", "constraints"),
    Wheel("ftfy", "models/wan/tokenizers.py", "constraints"),
    Wheel("wcwidth", "ftfy", "constraints"),
    Wheel("comfy-aimdo", "ComfyUI's model_management", "constraints"),
)
# Left out, each replaced on the GPU machine by a stand-in from bench/acceptance/shims.py:
LEFT_OUT = {
    "wandb": "20 MB; train.py imports it, and calls it only with [monitoring] (never here)",
    "comfy-kitchen": "45 MB of kernels; comfy/model_base.py imports it, comfy/quant_ops.py "
    "falls back without comfy_kitchen.tensor",
    "flash-attn": "no wheel for this torch/CUDA on PyPI; models/wan/model.py asserts it",
}
_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


@dataclass
class Manifest:
    dp_commit: str = DP_COMMIT
    submodules: dict[str, dict[str, str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    missing_blobs: list[str] = field(default_factory=list)
    wheels: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=lambda: dict(LEFT_OUT))

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


# -- which files travel --------------------------------------------------------------------------
def keep_path(path: str) -> bool:
    """Whether a file of diffusion-pipe or of a submodule travels."""
    parts = PurePosixPath(path).parts
    if any(part in _SKIP_DIRS for part in parts[:-1]):
        return False
    return PurePosixPath(path).suffix.lower() not in _SKIP_SUFFIXES


def parse_gitmodules(text: str) -> dict[str, str]:
    """``.gitmodules``: submodule path → URL."""
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return {
        parser[section]["path"]: parser[section]["url"]
        for section in parser.sections()
        if section.startswith("submodule")
    }


def mirror_candidates(url: str, mirrors: Path | None = None) -> list[Path]:
    """Mirrored repositories that may hold a submodule's commit: its own, then forks (any
    ``<owner>+<name>`` with the same name)."""
    mirrors = MIRRORS if mirrors is None else mirrors
    owner, name = url.rstrip("/").removesuffix(".git").split("/")[-2:]
    own = mirrors / f"{owner}+{name}" / "repo"
    forks = sorted(p / "repo" for p in mirrors.glob(f"*+{name}") if p / "repo" != own)
    return [own, *forks]


def _git(gitdir: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(gitdir), *args], capture_output=True, text=True, check=check
    )
    return done.stdout


def has_commit(gitdir: Path, commit: str) -> bool:
    if not gitdir.is_dir():
        return False
    done = subprocess.run(
        ["git", "-C", str(gitdir), "cat-file", "-e", f"{commit}^{{commit}}"],
        capture_output=True,
    )
    return done.returncode == 0


def gitlinks(gitdir: Path, commit: str) -> dict[str, str]:
    """Submodule path → the commit the superproject pins."""
    links = {}
    for line in _git(gitdir, "ls-tree", commit, "submodules/").splitlines():
        meta, path = line.split("\t", 1)
        _mode, kind, sha = meta.split()
        if kind == "commit":
            links[path] = sha
    return links


def tree_blobs(gitdir: Path, commit: str) -> list[tuple[str, str]]:
    """(path, blob id) of every file at ``commit``."""
    blobs = []
    for line in _git(gitdir, "ls-tree", "-r", commit).splitlines():
        meta, path = line.split("\t", 1)
        _mode, kind, sha = meta.split()
        if kind == "blob":
            blobs.append((path, sha))
    return blobs


def _blob_contents(gitdir: Path, shas: Iterable[str]) -> Iterator[tuple[str, bytes | None]]:
    """(sha, content or None where the mirror lacks the object), through one ``cat-file``."""
    wanted = list(shas)
    process = subprocess.Popen(
        ["git", "-C", str(gitdir), "cat-file", "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("".join(f"{sha}\n" for sha in wanted).encode())
    process.stdin.close()
    for sha in wanted:
        header = process.stdout.readline().decode().split()
        if len(header) < 3 or header[1] == "missing":
            yield sha, None
            continue
        content = process.stdout.read(int(header[2]))
        process.stdout.read(1)  # the newline after each object
        yield sha, content
    process.wait()


def _add_file(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o755 if name.endswith((".sh",)) else 0o644
    archive.addfile(info, io.BytesIO(content))


def add_tree(
    archive: tarfile.TarFile, gitdir: Path, commit: str, prefix: str, manifest: Manifest
) -> None:
    blobs = [(p, s) for p, s in tree_blobs(gitdir, commit) if keep_path(p)]
    by_sha: dict[str, list[str]] = {}
    for path, sha in blobs:
        by_sha.setdefault(sha, []).append(path)
    for sha, content in _blob_contents(gitdir, list(by_sha)):
        for path in by_sha[sha]:
            if content is None:
                manifest.missing_blobs.append(f"{prefix}{path}")
            else:
                _add_file(archive, f"{prefix}{path}", content)


def find_submodule(
    url: str, commit: str, explicit: Mapping[str, Path], path: str, mirrors: Path | None = None
) -> Path | None:
    for candidate in [explicit.get(path), *mirror_candidates(url, mirrors)]:
        if candidate is not None and has_commit(candidate, commit):
            return candidate
    return None


def build_dp_archive(
    dp_gitdir: Path,
    out: Path,
    manifest: Manifest,
    explicit: Mapping[str, Path],
    *,
    commit: str = DP_COMMIT,
    mirrors: Path | None = None,
) -> None:
    """diffusion-pipe and its needed submodules as ``diffusion-pipe/`` in one tar.xz."""
    modules = parse_gitmodules(_git(dp_gitdir, "show", f"{commit}:.gitmodules"))
    links = gitlinks(dp_gitdir, commit)
    manifest.dp_commit = commit
    with tarfile.open(out, "w:xz", preset=6) as archive:
        add_tree(archive, dp_gitdir, commit, "diffusion-pipe/", manifest)
        for path in NEEDED_SUBMODULES:
            if path not in links:
                manifest.missing.append(f"{path}: {commit} has no such submodule")
                continue
            sub_commit = links[path]
            source = find_submodule(modules[path], sub_commit, explicit, path, mirrors)
            if source is None:
                manifest.missing.append(
                    f"{path} at {sub_commit} ({modules[path]}): no mirror holds that commit; "
                    f"pass --submodule {path}=<a git directory that has it>"
                )
                continue
            manifest.submodules[path] = {"commit": sub_commit, "from": str(source)}
            add_tree(archive, source, sub_commit, f"diffusion-pipe/{path}/", manifest)


# -- wheels --------------------------------------------------------------------------------------
def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines (comments after ``#``), names normalised as pip does."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line):
            pins[normalise(match[1])] = match[2]
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_for(wheel: Wheel, pins: Mapping[str, str]) -> str:
    """``name==version``: the constraints file's pin, else this venv's version, else the
    name alone (pip's newest)."""
    version = pins.get(normalise(wheel.name)) if wheel.pin_from == "constraints" else None
    if version is None:
        try:
            version = metadata.version(wheel.name)
        except metadata.PackageNotFoundError:
            version = pins.get(normalise(wheel.name))
    return f"{wheel.name}=={version}" if version else wheel.name


def pip_download(requirement: str, dest: Path) -> None:
    platforms = [arg for p in _PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "--dest",
            str(dest),
            requirement,
        ],
        check=True,
    )


def build_deepspeed(requirement: str, dest: Path) -> None:
    """DeepSpeed ships only an sdist: a pure-Python wheel with no prebuilt ops (they compile
    just in time, and diffusion-pipe brings its own optimizers)."""
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dest),
            requirement,
        ],
        check=True,
        env=env,
    )


def keep_in_botocore(name: str, services: frozenset[str] = BOTOCORE_SERVICES) -> bool:
    """botocore's files minus the service models no local-stack client or moto backend reads."""
    parts = PurePosixPath(name).parts
    if len(parts) >= 4 and parts[0] == "botocore" and parts[1] == "data":
        return parts[2] in services
    return True


def restored_wheel(source: Path, keep: Callable[[str], bool] | None = None) -> bytes:
    """The wheel re-zipped uncompressed, optionally without some files (RECORD follows)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zout:
        names = [n for n in zin.namelist() if keep is None or keep(n)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        for name in names:
            data = zin.read(name)
            if name == record and keep is not None:
                data = _filtered_record(data, set(names))
            zout.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _filtered_record(record: bytes, names: set[str]) -> bytes:
    lines = [
        line for line in record.decode().splitlines() if line and line.split(",", 1)[0] in names
    ]
    return ("\n".join(lines) + "\n").encode()


def build_wheels_archive(
    downloads: Path, requirements: list[str], out: Path, manifest: Manifest
) -> None:
    wheels = [downloaded(downloads, r) for r in requirements]
    with (
        out.open("wb") as raw,
        lzma.open(raw, "w", preset=6) as xz,
        tarfile.open(fileobj=xz, mode="w") as archive,
    ):
        for wheel in sorted(w for w in wheels if w is not None):
            keep = keep_in_botocore if wheel.name.startswith("botocore-") else None
            data = restored_wheel(wheel, keep)
            _add_file(archive, f"wheels/{wheel.name}", data)
            manifest.wheels[wheel.name] = len(data)


def downloaded(downloads: Path, requirement: str) -> Path | None:
    """The wheel already fetched for ``name==version`` (any version for a bare name)."""
    name, _, version = requirement.partition("==")
    for path in downloads.glob("*.whl"):
        have_name, have_version = path.name.split("-")[:2]
        if normalise(have_name) == normalise(name) and version in ("", have_version):
            return path
    return None


def fetch_wheels(downloads: Path, pins: Mapping[str, str]) -> list[str]:
    """Each wheel once: a cache outside the tree keeps what an earlier prepare fetched."""
    downloads.mkdir(parents=True, exist_ok=True)
    requirements = []
    for wheel in WHEELS:
        requirement = requirement_for(wheel, pins)
        requirements.append(requirement)
        if downloaded(downloads, requirement) is not None:
            continue
        if wheel.name == "deepspeed":
            build_deepspeed(requirement, downloads)
        else:
            pip_download(requirement, downloads)
    return requirements


# -- the budget ----------------------------------------------------------------------------------
def tree_bytes(repo: Path) -> int:
    """What travels besides .acceptance/: tracked and untracked files that git does not ignore."""
    listed = _git(repo, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    return sum((repo / n).stat().st_size for n in listed.split("\0") if n and (repo / n).is_file())


def over_budget(sizes: Mapping[str, int], tree: int, budget: int = BUDGET_BYTES) -> int:
    """Bytes over the device's limit (negative: to spare)."""
    return tree + sum(sizes.values()) - budget


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(
    repo: Path,
    *,
    dp_gitdir: Path | None = None,
    submodules: Mapping[str, Path] | None = None,
    downloads: Path | None = None,
) -> tuple[Manifest, int]:
    """Write ``.acceptance/``; return the manifest and the bytes to spare (negative: over)."""
    out = repo / OUT_DIR
    out.mkdir(exist_ok=True)
    manifest = Manifest()
    dp_gitdir = dp_gitdir or MIRRORS / DP_REPO.replace("/", "+") / "repo"
    build_dp_archive(dp_gitdir, out / DP_ARCHIVE, manifest, submodules or {})
    constraints = repo / CONSTRAINTS
    pins = read_pins(constraints.read_text()) if constraints.is_file() else {}
    downloads = downloads or DOWNLOAD_CACHE
    requirements = fetch_wheels(downloads, pins)
    build_wheels_archive(downloads, requirements, out / WHEELS_ARCHIVE, manifest)
    for name in (DP_ARCHIVE, WHEELS_ARCHIVE):
        manifest.sizes[name] = (out / name).stat().st_size
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (out / MANIFEST).write_text(manifest.to_json())
    return manifest, -over_budget(manifest.sizes, tree_bytes(repo) + TREE_MARGIN_BYTES)
