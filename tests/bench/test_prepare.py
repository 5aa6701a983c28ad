"""``prepare``: which files travel, where submodules come from, the wheels, the budget."""

from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from bench.acceptance import prepare


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("models/flux.py", True),
        ("configs/t5_old/spiece.model", True),
        ("comfy/text_encoders/qwen25_tokenizer/merges.txt", True),
        ("comfy/ldm/lumina/model.py", True),
        ("tests/test_something.py", False),
        ("tests-unit/x.py", False),
        (".github/workflows/ci.yml", False),
        ("comfy_api_nodes/nodes_openai.py", False),
        ("assets/logo.png", False),
        ("docs/example.mp4", False),
        ("models/vae.safetensors", False),
    ],
)
def test_file_selection(path: str, kept: bool) -> None:
    assert prepare.keep_path(path) is kept


def test_gitmodules_map_paths_to_urls() -> None:
    text = (
        '[submodule "submodules/ComfyUI"]\n\tpath = submodules/ComfyUI\n'
        "\turl = https://github.com/comfyanonymous/ComfyUI\n"
    )
    assert prepare.parse_gitmodules(text) == {
        "submodules/ComfyUI": "https://github.com/comfyanonymous/ComfyUI"
    }


def test_a_submodule_is_looked_for_in_its_own_mirror_then_in_forks(tmp_path: Path) -> None:
    for name in ("comfyanonymous+ComfyUI", "yzkee+ComfyUI", "someone+Other"):
        (tmp_path / name / "repo").mkdir(parents=True)
    found = prepare.mirror_candidates("https://github.com/comfyanonymous/ComfyUI.git", tmp_path)
    assert found == [tmp_path / "comfyanonymous+ComfyUI/repo", tmp_path / "yzkee+ComfyUI/repo"]


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    _git(path, "init", "-q")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    _git(path, "add", "-A")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    return _git(path, "rev-parse", "HEAD")


def test_the_archive_holds_the_tree_and_submodules_found_in_a_fork(tmp_path: Path) -> None:
    """GIVEN a superproject whose gitlinks point at commits that only a fork's mirror holds
    WHEN the archive is built THEN both trees are in it at those commits, tests left out, and
    a submodule no mirror holds is named as missing."""
    mirrors = tmp_path / "mirrors"
    comfy = _repo(
        mirrors / "fork+ComfyUI" / "repo",
        {"comfy/sd.py": "x = 1\n", "tests/t.py": "", "logo.png": "png"},
    )
    gitmodules = "".join(
        f'[submodule "{p}"]\n\tpath = {p}\n\turl = https://github.com/up/{p.split("/")[1]}\n'
        for p in prepare.NEEDED_SUBMODULES
    )
    dp = tmp_path / "dp"
    _repo(dp, {"train.py": "print()\n", ".gitmodules": gitmodules})
    for path in prepare.NEEDED_SUBMODULES:
        sha = comfy if path.endswith("ComfyUI") else "1" * 40
        _git(dp, "update-index", "--add", "--cacheinfo", f"160000,{sha},{path}")
    _git(dp, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "links")
    head = _git(dp, "rev-parse", "HEAD")
    manifest = prepare.Manifest()

    out = tmp_path / "dp.tar.xz"
    prepare.build_dp_archive(dp, out, manifest, {}, commit=head, mirrors=mirrors)

    with tarfile.open(out) as archive:
        names = set(archive.getnames())
    assert "diffusion-pipe/train.py" in names
    assert "diffusion-pipe/submodules/ComfyUI/comfy/sd.py" in names
    assert not any("tests/" in n or n.endswith(".png") for n in names)
    assert manifest.submodules["submodules/ComfyUI"]["commit"] == comfy
    assert len(manifest.missing) == 1 and "HunyuanVideo" in manifest.missing[0]


def test_pins_are_read_from_a_constraints_file() -> None:
    text = "# header\ndiffusers==0.40.0   # diffusion-pipe\nTorch_Optimi==0.3.3\nnumpy>=2\n"
    assert prepare.read_pins(text) == {"diffusers": "0.40.0", "torch-optimi": "0.3.3"}


def test_requirements_take_the_image_pin_or_this_venvs_version() -> None:
    pins = {"diffusers": "0.40.0", "pydantic": "0.0.1"}
    assert prepare.requirement_for(prepare.Wheel("diffusers", "", "constraints"), pins) == (
        "diffusers==0.40.0"
    )
    from importlib import metadata

    venv = f"pydantic=={metadata.version('pydantic')}"
    assert prepare.requirement_for(prepare.Wheel("pydantic", ""), pins) == venv


def test_a_downloaded_wheel_is_found_by_normalised_name_and_version(tmp_path: Path) -> None:
    (tmp_path / "torch_optimi-0.3.3-py3-none-any.whl").write_bytes(b"")
    assert prepare.downloaded(tmp_path, "torch-optimi==0.3.3") is not None
    assert prepare.downloaded(tmp_path, "torch-optimi==0.3.4") is None


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in files.items())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(
            "botocore-1.0.dist-info/RECORD", record + "botocore-1.0.dist-info/RECORD,,\n"
        )
    return path


def test_botocore_keeps_only_the_local_stacks_service_data(tmp_path: Path) -> None:
    """GIVEN a botocore wheel WHEN re-packed THEN service models other than the local stack's
    are gone, from the files and from RECORD, and everything is stored uncompressed."""
    source = _wheel(
        tmp_path / "botocore-1.0-py3-none-any.whl",
        {
            "botocore/client.py": b"client",
            "botocore/data/endpoints.json": b"{}",
            "botocore/data/sqs/2012-11-05/service-2.json.gz": b"sqs",
            "botocore/data/ec2/2016-11-15/service-2.json.gz": b"ec2" * 1000,
        },
    )

    data = prepare.restored_wheel(source, prepare.keep_in_botocore)

    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        names = set(wheel.namelist())
        record = wheel.read("botocore-1.0.dist-info/RECORD").decode()
        methods = {info.compress_type for info in wheel.infolist()}
    assert "botocore/data/sqs/2012-11-05/service-2.json.gz" in names
    assert "botocore/data/endpoints.json" in names and "botocore/client.py" in names
    assert not any("/ec2/" in n for n in names) and "ec2" not in record
    assert methods == {zipfile.ZIP_STORED}


def test_the_budget_counts_the_tree_with_the_archives() -> None:
    sizes = {"a.tar.xz": 40 * 2**20, "b.tar.xz": 10 * 2**20}
    assert prepare.over_budget(sizes, tree=10 * 2**20) < 0
    assert prepare.over_budget(sizes, tree=20 * 2**20) == 6 * 2**20
