"""The job pipeline: fetch → caption → configure → provision → train → publish.

Each stage module exposes ``NAME`` and ``async def run(ctx) -> StageOutcome``. Stages are
idempotent, write through temp-file-and-rename, and never touch SQS: they get what they need
through the ``StageContext``.
"""
