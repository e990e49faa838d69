"""Sinks: where events end up (Orthanc, MongoDB views, the annotation worker).

Each sink connects in ``setup()``, not in ``__init__``, upserts on the event's natural
key so a replay changes nothing, and retries transient failures with backoff so an
outage shows up as backpressure, never as a lost event.
"""
