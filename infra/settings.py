"""The worker's settings, read once from the environment in ``main()`` and passed down.

AWS credentials, region and endpoint come from the standard AWS variables and credential chain
(``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_SQS``, profiles, instance roles):
loraq reads none of them itself, so a worker behaves exactly like the AWS CLI on the same host.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Which service captions images without a caption (videos always go to Gemini).
ImageCaptionBackend = Literal["joycaption", "gemini"]


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _default_extensions_dir() -> Path:
    # DeepSpeed compiles a CPU op on first use (~55 s on 2 cores): keep it inside the venv so
    # every run on this machine after the first pays ~2 s instead.
    return Path(sys.prefix) / "torch_extensions"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    queue_url: str
    topic_arn: str | None = None
    volume: Path = Path("/var/lib/loraq")

    worker_id: str = Field(default_factory=_default_worker_id)
    # Short on purpose: a dead worker's job reappears within this many seconds; the heartbeat
    # keeps a live one's message invisible.
    visibility_timeout: int = Field(default=120, ge=5, le=43_200)
    heartbeat_interval: float | None = Field(default=None, gt=0)
    lease_ttl: int | None = Field(default=None, ge=10)
    wait_time_seconds: int = Field(default=20, ge=0, le=20)
    # After this many failed attempts a job fails for good (and the queue's redrive policy
    # moves its message to the DLQ). None: the queue's own maxReceiveCount; a larger value is
    # clamped to it, since SQS would dead-letter the message first without a job.failed.
    max_receives: int | None = Field(default=None, ge=1)
    # A job whose runs killed their worker this many times (no outcome recorded: SIGKILL, the
    # OOM killer, a lost node) fails with worker_lost at its next receive. Kept below the
    # receive limit, so that the failure is published before the message is dead-lettered.
    max_lost_runs: int = Field(default=3, ge=1)
    # How often a worker looks at the dead-letter queue for jobs that died there in silence
    # (consumer.dead_letters); 0 turns it off.
    dead_letter_sweep_s: float = Field(default=300.0, ge=0)
    shutdown_grace_s: float = Field(default=90.0, gt=0)
    # When the event loop is blocked this long, every thread's stack goes to stderr while the
    # stall lasts (consumer.stall_watch). Below the visibility timeout, so it is seen before the
    # job is taken over; 0 turns it off.
    loop_stall_dump_s: float = Field(default=30.0, ge=0)
    # SQS caps one receipt at 12 h of invisibility: hand the job to a continuation message
    # before that (30 minutes of margin by default).
    handoff_after_s: float = Field(default=11.5 * 3600, gt=0, le=12 * 3600)

    # Retries: inside a stage (tenacity, seconds apart) and through SQS (growing delays).
    transient_retry_wait_s: float = Field(default=1.0, ge=0)
    retry_base_delay_s: int = Field(default=30, ge=0, le=900)

    # A trainer whose loss stays NaN/inf this many steps in a row is stopped (0: never).
    max_nonfinite_loss_steps: int = Field(default=20, ge=0)

    progress_interval_s: float = Field(default=5.0, ge=0)
    # The job's progress in UPDATES/ of the user's Hub repo (only for jobs that carry a Hub
    # token and publish there). Commits are batched: at most one per interval (plus the
    # final one), well inside the Hub's commit rate limits.
    updates_enabled: bool = True
    updates_commit_interval_s: float = Field(default=60.0, ge=0)

    diffusion_pipe_dir: Path = Path("/opt/diffusion-pipe")
    deepspeed_bin: str = "deepspeed"
    num_gpus: int = Field(default=1, ge=1)
    # NCCL_P2P_DISABLE/NCCL_IB_DISABLE for the trainer. None: only on RTX 4000-series cards,
    # which need them (diffusion-pipe README, "Training"); they slow NVLink hosts.
    nccl_disable_p2p: bool | None = None
    torch_extensions_dir: Path = Field(default_factory=_default_extensions_dir)
    # One GPU's memory, held against a job's estimated need before launch
    # (stages/model_budget.py). None: asked of the driver (nvidia-smi), so unknown on a host
    # without one, and then nothing is refused; 0: never refuse.
    gpu_memory_gib: float | None = Field(default=None, ge=0)

    max_download_bytes: int = Field(default=20 * 1024**3, gt=0)
    # Hosts or CIDRs a dataset URL may resolve to even though they are private (the local
    # stack's S3 on 127.0.0.1, an in-VPC MinIO). Empty: only public addresses.
    fetch_allow: list[str] = Field(default_factory=list)
    # A dataset transfer slower than this over one window fails (a server trickling one byte
    # every two seconds under a 10 MB Content-Length would otherwise hold a slot for hours), and
    # no dataset may take longer than the deadline, retries included. Sized for multi-GB zips:
    # 20 GiB (the size cap) at 2 MiB/s is under three hours.
    download_min_rate_bytes_s: int = Field(default=64 * 1024, ge=1)
    download_rate_window_s: float = Field(default=60.0, gt=0)
    download_deadline_s: float = Field(default=4 * 3600.0, gt=0)
    # Buckets the worker reads s3:// datasets from with its own role: a trust decision (anyone
    # who can send a message can read them). Any other s3:// dataset needs the request's own
    # credentials (dataset.s3) or a presigned https:// URL.
    dataset_buckets: list[str] = Field(default_factory=list)
    # The same decision for writes: output.s3 without keys writes with the worker's role only
    # into these buckets (else a tenant could overwrite any object the role can write).
    output_buckets: list[str] = Field(default_factory=list)
    local_publish_dir: Path | None = None
    # The Hugging Face Hub to provision weights from; None: huggingface_hub's own default
    # (HF_ENDPOINT, else https://huggingface.co). Tests point it at a local Hub.
    hf_endpoint: str | None = None
    # Temporary hosts for output.method litterbox / transfer_sh (and auto's fall-through), with
    # their upload limits, checked before uploading. Tests point the URLs at local servers.
    litterbox_url: str = "https://litterbox.catbox.moe/resources/internals/api.php"
    litterbox_max_bytes: int = Field(default=1024**3, gt=0)
    transfer_sh_url: str = "https://transfer.sh/"
    transfer_sh_max_bytes: int = Field(default=10 * 1024**3, gt=0)

    # Video captioning with Gemini (the key comes with each request, never from here).
    # None: google-genai's own endpoint. Tests point it at a local Gemini-compatible server.
    gemini_base_url: str | None = None
    # Model names are retired often: the first that exists (no 404) and answers wins.
    gemini_model: str = "gemini-2.5-flash"
    gemini_fallback_models: list[str] = Field(default_factory=lambda: ["gemini-2.0-flash"])
    gemini_prompt: str = (
        "Describe this video for training a video generation model, in one paragraph of plain "
        "prose: the subjects, their appearance and actions, the setting, camera movement, "
        "lighting and style. Do not start with 'This video' and do not use lists."
    )
    # Upload → ACTIVE usually takes seconds; a file still processing after this is retried later.
    gemini_active_timeout_s: float = Field(default=300.0, gt=0)
    gemini_poll_interval_s: float = Field(default=2.0, gt=0)
    # Per call, on 429/5xx: attempts, and the backoff when the reply names no Retry-After.
    gemini_max_attempts: int = Field(default=6, ge=1)
    gemini_retry_wait_s: float = Field(default=2.0, ge=0)
    gemini_retry_max_wait_s: float = Field(default=60.0, ge=0)
    # Files captioned at once per job (uploads, polls and generate calls all count).
    caption_concurrency: int = Field(default=4, ge=1, le=64)

    # Image captioning. "gemini" needs each request's Gemini key (preflight asks for it).
    caption_image_backend: ImageCaptionBackend = "joycaption"
    gemini_image_prompt: str = (
        "Describe this image for training an image generation model, in one paragraph of plain "
        "prose: the subjects, their appearance, the setting, composition, lighting and style. "
        "Do not start with 'This image' and do not use lists."
    )
    # JoyCaption (a LLaVA model): provisioned on first use into <volume>/models/joycaption/
    # from this Hub repository, like the base models; or read from joycaption_dir, used as is.
    joycaption_repo_id: str = "fancyfeast/llama-joycaption-beta-one-hf-llava"
    joycaption_revision: str = "main"
    joycaption_dir: Path | None = None
    joycaption_system_prompt: str = "You are a helpful image captioner."
    joycaption_prompt: str = "Write a descriptive caption for this image in a formal tone."
    # Images per generate call: more is faster until the GPU runs out of memory.
    joycaption_batch_size: int = Field(default=4, ge=1, le=64)
    joycaption_max_new_tokens: int = Field(default=300, ge=1, le=4096)
    # 0: greedy decoding (deterministic); otherwise sampled, as the model card recommends.
    joycaption_temperature: float = Field(default=0.6, ge=0, le=2)
    joycaption_top_p: float = Field(default=0.9, gt=0, le=1)
    # auto: CUDA in bfloat16 when a GPU is visible, else the CPU in float32 (slow, for tests).
    joycaption_device: Literal["auto", "cuda", "cpu"] = "auto"

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or max(1.0, self.visibility_timeout / 4)

    @property
    def lease_seconds(self) -> int:
        """A little shorter than the visibility timeout, renewed by the same heartbeat.

        So when a dead worker's message reappears, its lease has already expired and the next
        worker takes the job at once instead of waiting another visibility period.
        """
        margin = max(1, min(10, self.visibility_timeout // 4))
        return self.lease_ttl or max(3, self.visibility_timeout - margin)
