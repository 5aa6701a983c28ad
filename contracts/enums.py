"""Closed vocabularies. Every status, method and type used across layers is named here once."""

from enum import StrEnum


class ModelType(StrEnum):
    FLUX = "flux"
    SDXL = "sdxl"
    WAN13 = "wan13"
    WAN14B_T2V = "wan14b_t2v"
    WAN14B_I2V = "wan14b_i2v"
    QWEN = "qwen"
    Z_IMAGE_TURBO = "z_image_turbo"
    # Built in: a small DiT trained with DeepSpeed on the CPU, for the demo and the tests.
    TINY = "tiny"


class DatasetType(StrEnum):
    IMAGES = "images"
    VIDEOS = "videos"
    BOTH = "both"
    PRECAPTIONED = "precaptioned"


class OutputMethod(StrEnum):
    HUGGINGFACE = "huggingface"
    S3 = "s3"
    LITTERBOX = "litterbox"
    TRANSFER_SH = "transfer_sh"
    AUTO = "auto"
    # Keeps the result on the volume only: the demo and operators with a shared disk.
    LOCAL = "local"


class StageName(StrEnum):
    """The pipeline, in order. A job's ledger has one record per stage."""

    FETCH = "fetch"
    CAPTION = "caption"
    CONFIGURE = "configure"
    PROVISION = "provision"
    TRAIN = "train"
    PUBLISH = "publish"


class StageStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class JobStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventType(StrEnum):
    JOB_ACCEPTED = "loraq.job.accepted"
    STAGE_STARTED = "loraq.stage.started"
    STAGE_COMPLETED = "loraq.stage.completed"
    JOB_PROGRESS = "loraq.job.progress"
    JOB_CHECKPOINTED = "loraq.job.checkpointed"
    JOB_INTERRUPTED = "loraq.job.interrupted"
    JOB_SUCCEEDED = "loraq.job.succeeded"
    JOB_FAILED = "loraq.job.failed"

    @property
    def is_terminal(self) -> bool:
        return self in (EventType.JOB_SUCCEEDED, EventType.JOB_FAILED)


class ErrorCode(StrEnum):
    """Machine-readable failure reasons carried by ``loraq.job.failed``."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED = "unsupported"
    DATASET_DOWNLOAD_FAILED = "dataset_download_failed"
    DATASET_INVALID = "dataset_invalid"
    PROVISION_FAILED = "provision_failed"
    TRAINING_FAILED = "training_failed"
    # The loss went non-finite, or the saved LoRA holds NaN/inf: the settings must change.
    TRAINING_DIVERGED = "training_diverged"
    # The GPU cannot hold the job at its settings (refused up front, or CUDA ran out): the same
    # settings fail again on the same GPU, so the job fails once, naming what to lower.
    OUT_OF_MEMORY = "out_of_memory"
    PUBLISH_FAILED = "publish_failed"
    INTERNAL_ERROR = "internal_error"
    # The job's runs ended with their worker's death (killed, out of memory) too many times.
    WORKER_LOST = "worker_lost"
