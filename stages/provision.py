"""Provision: make sure the base model's weights are on the volume before training starts.

``tiny`` is built in (its base weights come from a fixed seed), so there is nothing to fetch.
For the real types, a pre-provisioned volume (a copied disk, a shared EFS) is used as is;
downloading from the Hub is the next step of this stage. Every required path must be present
before the stage is recorded as completed.
"""

from __future__ import annotations

from contracts.enums import ErrorCode, StageName
from stages.context import StageContext, StageOutcome
from stages.errors import Permanent
from stages.registry import spec_for

NAME = StageName.PROVISION


async def run(ctx: StageContext) -> StageOutcome:
    spec = spec_for(ctx.request.model_type)
    if spec.builtin:
        return StageOutcome({"weights": "builtin"})
    models_dir = ctx.store.models_dir(spec.model_type)
    missing = [str(p) for p in spec.required_paths(models_dir) if not p.exists()]
    if missing:
        raise Permanent(
            ErrorCode.PROVISION_FAILED,
            f"base weights for {spec.model_type} are not on the volume: missing "
            f"{', '.join(missing)}; pre-provision the volume's models/{spec.model_type}/ folder",
            field="model_type",
        )
    return StageOutcome({"weights": str(models_dir)})
