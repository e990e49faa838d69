"""The running pieces of the annotation path, for integration tests: the DICOM listener,
the view worker (every agent in one app) and the annotation worker, on the real stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cohortstream.admin import ensure_topics
from cohortstream.mongo import mongo_client, mongo_database
from cohortstream.settings import Settings
from producers.dicom import DicomListener
from streams.annotator import build_annotator_app
from streams.worker import build_worker_app

__all__ = ["annotation_stack"]


@asynccontextmanager
async def annotation_stack(settings: Settings) -> AsyncIterator[Any]:
    """Start listener, view worker and annotation worker; yield the views database; stop
    them and drop the database."""
    await ensure_topics(settings)
    worker, annotator = build_worker_app(settings), build_annotator_app(settings)
    client = mongo_client(settings)
    await worker.start()
    await annotator.start()
    try:
        with DicomListener(settings):
            yield mongo_database(client, settings)
    finally:
        await annotator.stop()
        await worker.stop()
        await client.drop_database(settings.mongo_database)
        await client.close()
