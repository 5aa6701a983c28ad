"""Data shared by every layer: the job request, events, the stage ledger and the result.

This package is data only (pydantic models and ``StrEnum``s): it imports nothing of loraq's
and does no I/O, so any layer (and any user's client) can depend on it.
"""
