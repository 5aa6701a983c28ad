"""The job's result: the seed's response fields (``result.json`` and ``job.succeeded`` data)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from contracts.enums import ModelType, OutputMethod


class OutputInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    download_url: str | None = None
    safetensors_url: str | None = None
    repo_url: str | None = None
    download_method: OutputMethod
    expires_in_days: float | None = None
    archive_size_mb: float | None = None
    note: str | None = None
    network_volume_path: str | None = None


class JobResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["success"] = "success"
    job_id: str
    model_type: ModelType
    model_name: str
    epochs_completed: int
    latest_epoch: str
    output: OutputInfo
