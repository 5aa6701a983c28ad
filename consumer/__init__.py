"""The long-running worker: SQS receive loop, leases, heartbeats, event publishing, shutdown.

It knows nothing of model types or TOML keys: it hands a parsed request to the stage pipeline
and turns the pipeline's outcome into events and queue acknowledgements.
"""
