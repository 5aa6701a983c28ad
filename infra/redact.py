"""Keep secrets out of logs, events and files: mask known secret values and token shapes.

Secrets reach loraq only inside requests (``SecretStr``) and the environment. Error messages
from libraries can still echo them (a URL with a presigned signature, a header in a traceback),
so every message that leaves the process passes through a ``Redactor``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

MASK = "***"
_TOKENS = re.compile(r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}")
# Query strings carry presigned signatures and tokens: keep the name, mask the value.
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&](?:X-Amz-[A-Za-z-]+|Signature|sig|token|access_token|key)=)[^&\s\"']+", re.I
)

# URL userinfo (``http://user:PASS@host``) authenticates: the host stays, the rest goes.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#\"']+@")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = _TOKENS.sub(MASK, text)
        text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
        return _QUERY_SECRET.sub(lambda m: m.group("name") + MASK, text)


redact = Redactor()
# The redactor of the job whose task is logging: it also knows that job's secret values.
_current: ContextVar[Redactor] = ContextVar("loraq_redactor", default=redact)


def redact_current(text: str) -> str:
    """Mask with the running job's redactor (its own secrets too), else the generic one."""
    return _current.get()(text)


@contextmanager
def redacting(redactor: Redactor) -> Iterator[None]:
    """Log lines written inside (in this task and the tasks it starts) mask ``redactor``'s."""
    token = _current.set(redactor)
    try:
        yield
    finally:
        _current.reset(token)
