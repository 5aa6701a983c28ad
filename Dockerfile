# syntax=docker/dockerfile:1.7
#
# The loraq GPU worker: CUDA 12.8 runtime + Python 3.12 venv + CUDA torch + diffusion-pipe at a
# pinned commit + loraq. Build from the repository root:
#
#   docker build -t loraq-worker .
#   docker run --gpus all --init -e LORAQ_QUEUE_URL=... -v loraq:/var/lib/loraq loraq-worker
#
# Two stages: the builder carries git, a C toolchain and pip's cache; the runtime stage gets only
# the finished venv and the diffusion-pipe tree (without its .git histories).

# The CUDA image, one ARG for both stages so the venv's python3.12 is byte-for-byte the one it
# was built against. "runtime" rather than "cudnn-runtime": the cu128 torch wheels bring their
# own cuDNN/cuBLAS/NCCL as pip packages, so the base's copies would be ~1 GB of duplicates.
# Switch to nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 if a non-torch library needs a system
# cuDNN. Keep the CUDA minor version equal to the torch index's (cu128 <-> 12.8): DeepSpeed
# checks that nvcc and torch.version.cuda agree before it JIT-compiles an op.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# The trainer contract in DESIGN.md (CLI flags, log lines, output layout, save_quit) is written
# against this diffusion-pipe commit: bump it only together with the adapter and its tests.
# Declared here so both stages see the same value (the runtime stage labels the image with it).
ARG DIFFUSION_PIPE_COMMIT=8f83dbf25d03219df705570ec03e62be04bc402f

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS builder

# Every RUN's pipes fail when any command in them fails, not only the last: without it a failed
# `pip list` piped into grep would leave an empty torch constraints file and the build would go on.
# SHELL holds for one stage only, so the runtime stage says it again.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# torch is not on PyPI with the CUDA build we want; it comes from PyTorch's cu128 index.
# diffusion-pipe leaves torch out of requirements.txt on purpose ("install PyTorch first").
# torchvision and torchaudio are required too: diffusion-pipe's models/base.py imports both at top
# level (torchaudio since upstream 8c63bd7, and its requirements.txt does not list it), and every
# model module imports models.base. torchaudio 2.8.0 requires torch==2.8.0 exactly (its version
# follows torch's), so the trio comes from one index in one pip call.
ARG TORCH_VERSION=2.8.0
ARG TORCHVISION_VERSION=0.23.0
ARG TORCHAUDIO_VERSION=2.8.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DIFFUSION_PIPE_REPO=https://github.com/tdrussell/diffusion-pipe.git
ARG DIFFUSION_PIPE_COMMIT
# Required for Wan: its model and CLIP call flash_attention directly (models/wan/model.py), which
# asserts flash-attn 2 is importable (models/wan/attention.py:107); only the attention() wrapper
# that Wan does not use falls back to SDPA.
ARG FLASH_ATTN_VERSION=2.8.3

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# git: the clone. build-essential + python3-dev: the few sdists in diffusion-pipe's requirements.
# cuda-nvcc: DeepSpeed's setup.py asks nvcc for the CUDA version once it can import a CUDA torch
# (diffusion-pipe's README lists nvcc as an install step for the same reason). $CUDA_VERSION is
# set by the nvidia/cuda base image (e.g. 12.8.1 -> package suffix 12-8).
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    set -eux; \
    rm -f /etc/apt/apt.conf.d/docker-clean; \
    cuda_pkg="$(echo "${CUDA_VERSION}" | cut -d. -f1,2 | tr . -)"; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        ca-certificates git build-essential \
        python3 python3-venv python3-dev \
        "cuda-nvcc-${cuda_pkg}" "cuda-cudart-dev-${cuda_pkg}"

RUN python3 -m venv /opt/venv

# The pins for diffusion-pipe's and ComfyUI's requirements, which upstream leaves unpinned (the
# file's header says how they were resolved). Copied alone so that editing loraq keeps the layers
# below cached.
COPY infra/deploy/diffusion-pipe-constraints.txt /opt/diffusion-pipe-constraints.txt

# torch first, from the CUDA index; everything after this is installed against a constraints
# file that pins the torch family to exactly what is in the venv now, so no later requirement
# (diffusion-pipe's, ComfyUI's, flash-attn's, loraq's own "torch>=2.5") can swap in a CPU or
# other CUDA build. The torch install itself takes no -c: the CUDA index does not carry every
# version the constraints pin, and the installs below move torch's helpers to the pins anyway.
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    pip install --upgrade pip setuptools; \
    pip install -c /opt/diffusion-pipe-constraints.txt wheel packaging; \
    pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        "torchaudio==${TORCHAUDIO_VERSION}"; \
    pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio|triton)==' \
        > /opt/torch-constraints.txt; \
    cat /opt/torch-constraints.txt

# diffusion-pipe at the pinned commit, with its submodules at the commits that commit records
# (clone --recurse-submodules fetches them; the second update moves them to the pinned commit's
# gitlinks). The .git directories are dropped: the runtime never calls git, and they are most of
# the tree's size (ComfyUI's history alone is hundreds of MB).
RUN set -eux; \
    git clone --recurse-submodules "${DIFFUSION_PIPE_REPO}" /opt/diffusion-pipe; \
    git -C /opt/diffusion-pipe checkout --detach "${DIFFUSION_PIPE_COMMIT}"; \
    git -C /opt/diffusion-pipe submodule update --init --recursive; \
    test "$(git -C /opt/diffusion-pipe rev-parse HEAD)" = "${DIFFUSION_PIPE_COMMIT}"; \
    git -C /opt/diffusion-pipe submodule status --recursive; \
    find /opt/diffusion-pipe -name .git -prune -exec rm -rf {} +

# The checkout is where upstream's code expects to run from: the import check below imports its
# modules from here, as train.py does.
WORKDIR /opt/diffusion-pipe

# diffusion-pipe's requirements, and ComfyUI's: models/base.py puts submodules/ComfyUI on sys.path
# and imports comfy.* at top level, and those modules import what diffusion-pipe's requirements.txt
# does not list (psutil, pyyaml, tokenizers, ...). ComfyUI's file is taken down to its "#non
# essential dependencies:" line, less its comfyui-* packages (the web UI's frontend, templates and
# docs, which only ComfyUI's server imports). DeepSpeed ships only as an sdist: build it first, at
# the version requirements.txt pins (the constraints file carries the same pin), without build
# isolation so its setup.py sees the CUDA torch (otherwise it records torch "0.0" and skips
# nvidia-ml-py). DS_ACCELERATOR=cuda because the build machine has no GPU and DeepSpeed would
# otherwise pick its CPU accelerator; DS_BUILD_OPS=0 leaves ops to JIT compilation at run time
# (most are never used: diffusion-pipe brings its own optimizers).
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    DS_ACCELERATOR=cuda DS_BUILD_OPS=0 \
        pip install --no-build-isolation \
        -c /opt/torch-constraints.txt -c /opt/diffusion-pipe-constraints.txt deepspeed; \
    sed -n '1,/^#non essential/p' submodules/ComfyUI/requirements.txt \
        | grep -vE '^(#|comfyui-)' > /opt/comfyui-requirements.txt; \
    pip install -c /opt/torch-constraints.txt -c /opt/diffusion-pipe-constraints.txt \
        -r requirements.txt -r /opt/comfyui-requirements.txt

# flash-attn, required (see FLASH_ATTN_VERSION): only a prebuilt wheel for this torch/CUDA/Python
# is tried, straight from the project's release assets. Its setup.py would fall back to a source
# build (an hour and tens of GB of RAM with nvcc present), so there is no fallback at all: with no
# wheel for this combination the build stops here, rather than ship an image whose Wan jobs fail
# at their first step. Bump FLASH_ATTN_VERSION together with TORCH_VERSION.
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    torch_mm="$(echo "${TORCH_VERSION}" | cut -d. -f1,2)"; \
    wheel="flash_attn-${FLASH_ATTN_VERSION}+cu12torch${torch_mm}cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"; \
    pip install -c /opt/torch-constraints.txt -c /opt/diffusion-pipe-constraints.txt \
        "https://github.com/Dao-AILab/flash-attention/releases/download/v${FLASH_ATTN_VERSION}/${wheel}"

# Import check: every module loraq's model types load (and what train.py imports) imports here, so
# a package missing from the image fails the build instead of the first job. Import only: nothing
# touches a GPU, and the build machine has none. ComfyUI's model_management asks CUDA for the
# current device at import unless its --cpu flag is set; its args are a plain namespace built when
# comfy.cli_args is imported, so the check sets cpu there first (same modules imported, only the
# device it would pick differs). `utils` is imported before ComfyUI goes on sys.path, as train.py
# does: diffusion-pipe's utils/ has no __init__.py, ComfyUI's has, and a regular package found
# anywhere on sys.path wins over a namespace one. flash_attn is imported by name because
# models/wan/attention.py swallows its ImportError.
RUN DS_ACCELERATOR=cuda python -c "import sys, utils; \
sys.path.append('/opt/diffusion-pipe/submodules/ComfyUI'); \
import comfy.cli_args; comfy.cli_args.args.cpu = True; \
import torchaudio, flash_attn, wandb, toml, deepspeed, multiprocess, torch.utils.tensorboard; \
import utils.dataset, utils.common, utils.saver, utils.isolate_rng, utils.patches; \
import utils.unsloth_utils, utils.pipeline; \
import models.flux, models.sdxl, models.wan.wan, models.qwen_image, models.z_image; \
print('diffusion-pipe model modules import')"

# loraq last: its code changes most often, so the layers above stay cached. Installed as a normal
# (non-editable) package; the constraints keep the venv's torch even though pyproject says only
# "torch>=2.5" (the CPU build used by tests satisfies that range too), and keep upstream's pins
# under loraq's wider ranges. `pip check` fails the build on any conflict: every upstream
# requirement is pinned, so a conflict is a real one.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    pip install -c /opt/torch-constraints.txt -c /opt/diffusion-pipe-constraints.txt /src; \
    pip check; \
    python -c "import torch, torchaudio, deepspeed, flash_attn, loraq; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG DIFFUSION_PIPE_COMMIT

# python3: the interpreter the venv links to. python3-dev + g++: Triton compiles a small C
# launcher at first use and DeepSpeed JIT-compiles ops, both with the system compiler and
# Python.h. cuda-nvcc / cudart-dev: DeepSpeed's JIT ops and its nvcc-vs-torch CUDA check.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    set -eux; \
    rm -f /etc/apt/apt.conf.d/docker-clean; \
    cuda_pkg="$(echo "${CUDA_VERSION}" | cut -d. -f1,2 | tr . -)"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-dev g++ \
        "cuda-nvcc-${cuda_pkg}" "cuda-cudart-dev-${cuda_pkg}"

# A fixed, non-root uid so the shared volume's ownership is the same from every host and pod
# (the Kubernetes Deployment sets runAsUser/fsGroup to the same 10001).
RUN set -eux; \
    groupadd --gid 10001 loraq; \
    useradd --uid 10001 --gid 10001 --create-home --home-dir /home/loraq \
        --shell /usr/sbin/nologin loraq; \
    mkdir -p /var/lib/loraq /opt/torch_extensions; \
    chown loraq:loraq /var/lib/loraq /opt/torch_extensions

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/diffusion-pipe /opt/diffusion-pipe

# TORCH_EXTENSIONS_DIR lives in the image's own writable /opt, not on the shared volume: torch
# guards a build with a lock file, and a worker killed mid-compile would leave a stale lock on the
# volume that hangs every other worker. LORAQ_TORCH_EXTENSIONS_DIR is loraq's setting for the same
# path (its default, inside the venv, is root-owned here).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LORAQ_VOLUME=/var/lib/loraq \
    LORAQ_DIFFUSION_PIPE_DIR=/opt/diffusion-pipe \
    TORCH_EXTENSIONS_DIR=/opt/torch_extensions \
    LORAQ_TORCH_EXTENSIONS_DIR=/opt/torch_extensions \
    DIFFUSION_PIPE_COMMIT=${DIFFUSION_PIPE_COMMIT}

LABEL org.opencontainers.image.title="loraq-worker" \
      org.opencontainers.image.description="Queue-driven LoRA trainer (diffusion-pipe) worker" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.loraq.diffusion-pipe.commit="${DIFFUSION_PIPE_COMMIT}"

# Job dirs, provisioned model weights, events: everything that must outlive the container.
VOLUME /var/lib/loraq

USER loraq
WORKDIR /home/loraq

# The worker turns SIGTERM into a graceful stop: diffusion-pipe's save_quit checkpoint, a
# loraq.job.interrupted event and the message handed back (LORAQ_SHUTDOWN_GRACE_S, 90 s by
# default). Give it that long: docker stop -t 100, Kubernetes terminationGracePeriodSeconds 120.
# Run with `docker run --init` (or any init) so orphaned DeepSpeed children are reaped.
STOPSIGNAL SIGTERM
ENTRYPOINT ["loraq"]
CMD ["worker"]
