"""Adapters to the outside world (SQS, SNS, S3, HTTP, the volume) and the local stack.

Each adapter is a small class behind a narrow interface; none of them decides what a job does.
"""
