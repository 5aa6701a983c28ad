"""Publish: deliver the newest LoRA and write ``result.json`` (the seed's response).

Each method lives in ``stages.delivery``. ``auto`` tries the seed's order (the Hub when the
request carries a write token, then litterbox, then transfer.sh) and falls through on failure;
the reasons it fell through travel in the result's ``note`` and in the stage's outputs, so the
user sees why the LoRA ended up where it did.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from contracts.enums import ErrorCode, OutputMethod, StageName
from contracts.request import JobInput
from contracts.result import JobResult, OutputInfo
from stages.context import StageContext, StageOutcome
from stages.delivery import Bundle, DeliveryError
from stages.delivery import huggingface as huggingface_delivery
from stages.delivery import litterbox as litterbox_delivery
from stages.delivery import local as local_delivery
from stages.delivery import record as records
from stages.delivery import s3 as s3_delivery
from stages.delivery import transfer_sh as transfer_sh_delivery
from stages.errors import Permanent, Retryable
from stages.registry import spec_for
from stages.trainer.run_dirs import saved_models

NAME = StageName.PUBLISH

Deliver = Callable[[StageContext, Bundle], Awaitable[OutputInfo]]
DELIVERIES: dict[OutputMethod, Deliver] = {
    OutputMethod.LOCAL: local_delivery.deliver,
    OutputMethod.S3: s3_delivery.deliver,
    OutputMethod.HUGGINGFACE: huggingface_delivery.deliver,
    OutputMethod.LITTERBOX: litterbox_delivery.deliver,
    OutputMethod.TRANSFER_SH: transfer_sh_delivery.deliver,
}
# The seed's fall-through order for ``auto``; the Hub only when a token came with the request.
AUTO_ORDER = (OutputMethod.HUGGINGFACE, OutputMethod.LITTERBOX, OutputMethod.TRANSFER_SH)
SUPPORTED_METHODS = frozenset(DELIVERIES) | (
    {OutputMethod.AUTO} if any(m in DELIVERIES for m in AUTO_ORDER) else set()
)

log = structlog.get_logger(__name__)


def auto_candidates(request: JobInput) -> list[OutputMethod]:
    """The methods ``auto`` tries for this request, in order."""
    order = [m for m in AUTO_ORDER if m in DELIVERIES]
    if request.huggingface_token() is None and OutputMethod.HUGGINGFACE in order:
        order.remove(OutputMethod.HUGGINGFACE)
    return order


async def run(ctx: StageContext) -> StageOutcome:
    bundle = _bundle(ctx)
    method = ctx.request.output.method
    fell_through: list[str] = []
    if method is OutputMethod.AUTO:
        output = await _deliver_auto(ctx, bundle, fell_through)
    elif method in DELIVERIES:
        output = await _deliver_one(ctx, method, bundle)
    else:
        raise Permanent(
            ErrorCode.UNSUPPORTED,
            f"output method '{method}' is not available",
            field="output.method",
        )
    spec = spec_for(ctx.request.model_type)
    result = JobResult(
        job_id=ctx.job_id,
        model_type=ctx.request.model_type,
        model_name=spec.display_name,
        epochs_completed=int(ctx.output_of(StageName.TRAIN, "epochs_completed") or 0),
        latest_epoch=bundle.model_dir.name,
        output=output,
    )
    ctx.store.save_result(result)
    return StageOutcome(
        {
            "download_url_set": output.download_url is not None,
            "delivered_by": output.download_method.value,
            "fell_through": "; ".join(fell_through) or None,
        }
    )


def _bundle(ctx: StageContext) -> Bundle:
    model_dir = Path(str(ctx.output_of(StageName.TRAIN, "model_dir")))
    lora_path = Path(str(ctx.output_of(StageName.TRAIN, "lora_path")))
    if not lora_path.is_file():
        raise Permanent(ErrorCode.PUBLISH_FAILED, f"the trained LoRA is missing: {lora_path}")
    epochs = tuple(d for _, _, d in saved_models(model_dir.parent, lora_path.name))
    return Bundle(
        job_id=ctx.job_id,
        model_dir=model_dir,
        lora_path=lora_path,
        epoch_dirs=epochs or (model_dir,),
    )


async def _deliver_one(ctx: StageContext, method: OutputMethod, bundle: Bundle) -> OutputInfo:
    try:
        return await DELIVERIES[method](ctx, bundle)
    except DeliveryError as exc:
        failure = Retryable if exc.retryable else Permanent
        raise failure(ErrorCode.PUBLISH_FAILED, exc.message, field=exc.field) from exc


async def _deliver_auto(ctx: StageContext, bundle: Bundle, reasons: list[str]) -> OutputInfo:
    candidates = auto_candidates(ctx.request)
    recorded = records.load(records.record_path(ctx.paths.root))
    if recorded is not None and recorded.method in candidates:
        # A re-run after a crash: the host that took the upload last time goes first, so its
        # link is reused instead of the same archive going to an earlier host a second time.
        candidates.remove(recorded.method)
        candidates.insert(0, recorded.method)
    if OutputMethod.HUGGINGFACE in AUTO_ORDER and OutputMethod.HUGGINGFACE not in candidates:
        reasons.append("huggingface: no token in the request")
    retryable = False
    for method in candidates:
        try:
            output = await DELIVERIES[method](ctx, bundle)
        except DeliveryError as exc:
            reason = f"{method.value}: {ctx.redact(exc.message)}"
            log.warning("delivery_fell_through", job_id=ctx.job_id, reason=reason)
            reasons.append(reason)
            retryable = retryable or exc.retryable
            continue
        if reasons:
            fell = "; ".join(reasons)
            output.note = f"{output.note} (fell through: {fell})" if output.note else fell
        return output
    failure = Retryable if retryable else Permanent
    raise failure(
        ErrorCode.PUBLISH_FAILED,
        "no delivery method succeeded: " + "; ".join(reasons),
        field="output.method",
    )
