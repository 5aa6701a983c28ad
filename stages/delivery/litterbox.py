"""``litterbox``: the zip on litterbox.catbox.moe, catbox's temporary host (1 GB, 72 hours).

Its API is one form (``curl -F reqtype=fileupload -F time=72h -F fileToUpload=@file``) whose
reply is the file's link as plain text; errors come back as other text, sometimes with 200.
"""

from __future__ import annotations

from datetime import timedelta

from contracts.enums import OutputMethod
from contracts.result import OutputInfo
from stages.context import StageContext
from stages.delivery import Bundle
from stages.delivery.temp_host import TempHost, deliver_to

# The longest retention litterbox offers (its choices: 1h, 12h, 24h, 72h).
RETENTION = "72h"


async def deliver(ctx: StageContext, bundle: Bundle) -> OutputInfo:
    host = TempHost(
        method=OutputMethod.LITTERBOX,
        name="litterbox",
        url=ctx.settings.litterbox_url,
        max_bytes=ctx.settings.litterbox_max_bytes,
        lifetime=timedelta(hours=72),
        fields=(("reqtype", "fileupload"), ("time", RETENTION)),
        file_field="fileToUpload",
        note="A zip on litterbox.catbox.moe, deleted after 72 hours",
    )
    return await deliver_to(host, ctx, bundle)
