"""``cohortstream annotate ...``: the annotation worker, the demo model's training, and
manual requests for a suggestion."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cohortstream.errors import CohortStreamError
from cohortstream.settings import Settings

__all__ = ["add_commands"]


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.annotator import run_annotator

    run_annotator(settings)
    return 0


def _cmd_train_demo(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.annotation import train_demo

    return int(train_demo.main(args.train_args))


class SeriesNotInViewsError(CohortStreamError, LookupError):
    """The series to annotate is not in the views."""


def _cmd_request(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.events import AnnotationRequested, AnnotationRequestReason
    from cohortstream.mongo import mongo_client, mongo_database
    from cohortstream.publisher import EventPublisher

    async def request() -> str:
        client = mongo_client(settings)
        try:
            doc = await mongo_database(client, settings)["series"].find_one({"_id": args.series})
        finally:
            await client.close()
        if doc is None:
            raise SeriesNotInViewsError(f"series {args.series} is not in the views (received yet?)")
        event = AnnotationRequested(
            producer="cli",
            study_instance_uid=str(doc["study_instance_uid"]),
            series_instance_uid=args.series,
            series_revision=args.revision,
            model_name=args.model,
            requested_by=args.requested_by,
            reason=AnnotationRequestReason.MANUAL,
        )
        async with EventPublisher(settings) as publisher:
            await publisher.publish(event, key=args.series)
        return str(event.request_id)

    print(asyncio.run(request()))
    return 0


def add_commands(commands: Any) -> None:
    """Attach ``annotate`` to the top-level subcommands."""
    p = commands.add_parser("annotate", help="AI annotation: run the suggestion worker, train the demo model")
    annotate = p.add_subparsers(dest="annotate_command", metavar="ACTION", required=True)
    a = annotate.add_parser(
        "worker", help="consume completed series and manual requests, publish suggestions (GPU if present)"
    )
    a.set_defaults(func=_cmd_worker)
    a = annotate.add_parser(
        "train-demo",
        help="train the bundled demo 3D UNet on MONAI phantoms (arguments go to the trainer; try -- --help)",
    )
    a.add_argument("train_args", nargs=argparse.REMAINDER, help="passed to consumers.annotation.train_demo")
    a.set_defaults(func=_cmd_train_demo)
    a = annotate.add_parser(
        "request", help="ask the worker for a (new) suggestion for one series; prints the request id"
    )
    a.add_argument("series", help="SeriesInstanceUID (must be in the views)")
    a.add_argument("--model", default=None, help="model name (default: the first that applies)")
    a.add_argument("--revision", type=int, default=1, help="series revision the suggestion is for")
    a.add_argument("--requested-by", default="cli", help="who asks (kept in the event)")
    a.set_defaults(func=_cmd_request)
