"""``transfer_sh``: the zip on transfer.sh (10 GB, kept 14 days).

The server (dutchcoders/transfer.sh) takes a multipart POST to ``/`` and stores every file
part whatever its field name (its docs use ``filedata``); the ``Max-Days`` header sets the
deletion date. The reply is one link per file, as plain text, and an ``X-Url-Delete`` header.
"""

from __future__ import annotations

from datetime import timedelta

from contracts.enums import OutputMethod
from contracts.result import OutputInfo
from stages.context import StageContext
from stages.delivery import Bundle
from stages.delivery.temp_host import TempHost, deliver_to

MAX_DAYS = 14


async def deliver(ctx: StageContext, bundle: Bundle) -> OutputInfo:
    host = TempHost(
        method=OutputMethod.TRANSFER_SH,
        name="transfer.sh",
        url=ctx.settings.transfer_sh_url,
        max_bytes=ctx.settings.transfer_sh_max_bytes,
        lifetime=timedelta(days=MAX_DAYS),
        fields=(),
        file_field="filedata",
        headers=(("Max-Days", str(MAX_DAYS)),),
        note=f"A zip on transfer.sh, deleted after {MAX_DAYS} days",
    )
    return await deliver_to(host, ctx, bundle)
