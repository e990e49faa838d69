"""The ``cohortstream`` command line.

``main(argv=None)`` parses, builds the one Settings object and hands it to the chosen
command; tests call ``main([...])`` directly. Subcommands that need services import them
lazily so ``cohortstream --help`` stays fast and works without a stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cohortstream import __version__
from cohortstream.errors import CohortStreamError
from cohortstream.redact import mask_url_credentials
from cohortstream.settings import Settings, env_var_name, settings_markdown_table, unknown_env_vars

__all__ = ["main"]

log = logging.getLogger("cohortstream.cli")


def _cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(settings_markdown_table())
    else:
        # SecretStr fields print as '**********': never echo credentials.
        print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0


def _cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.schemas import default_registry

    for schema in default_registry():
        print(f"{schema.name}\tv{schema.version}\t{schema.fingerprint_bytes.hex()}\t{schema.source}")
    return 0


def _cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.topics import TOPICS

    if args.action == "list":
        for spec in TOPICS:
            print(f"{spec.full_name(settings)}\t{spec.event.avro_name}\tkey={spec.key}")
        return 0
    from cohortstream.admin import ensure_topics

    created = asyncio.run(ensure_topics(settings))
    for name in created:
        print(f"created {name}")
    print(f"{len(TOPICS)} topics present ({len(created)} created)")
    return 0


def _cmd_kafka_acls(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.kafka_acls import acl_plan, apply_acls

    plan = acl_plan(settings)
    if args.apply:
        asyncio.run(apply_acls(settings, plan))
        print(f"{len(plan)} ACLs present on {settings.kafka_bootstrap}")
        return 0
    for acl in plan:
        print(acl.describe())
    return 0


def _cmd_events_decode(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.codec import EventCodec

    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    event = EventCodec().decode_event(data)
    print(json.dumps({"schema": event.avro_name, "event": event.model_dump(mode="json")}, indent=2))
    return 0


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.lanes import LANES

    lanes: list[str] = args.lane or []
    unknown = sorted(set(lanes) - set(LANES))
    if unknown:
        raise CohortStreamError(f"--lane: unknown lane(s) {', '.join(unknown)} (known: {', '.join(LANES)})")
    if len(lanes) == 1:
        from streams.worker import run_lane

        run_lane(settings, lanes[0], settings.worker_metrics_port)
        return 0
    from streams.supervisor import run_worker

    return run_worker(settings, lanes)


def _cmd_dicom_scp(settings: Settings, args: argparse.Namespace) -> int:
    from producers.dicom import serve, serve_processes

    return serve(settings) if args.one_process else serve_processes(settings)


def _cmd_staging_sweep(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.staging_sweeper import sweep_staging

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(desc="staging sweep", unit=" files", total=total, file=sys.stderr, mininterval=0.5)
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        report = asyncio.run(
            sweep_staging(
                settings,
                min_age_s=args.min_age_s,
                dry_run=args.dry_run,
                on_progress=progress if _progress_wanted(args) else None,
            )
        )
    finally:
        if bar is not None:
            bar.close()
    print(report.summary())
    for uid in report.republished:
        print(f"{'orphan' if args.dry_run else 'republished'}\t{uid}")
    return 0


def _progress_wanted(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr, and only to a terminal (never into a log file)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _cmd_redcap_sync(settings: Settings, args: argparse.Namespace) -> int:
    from cohortstream.logs import LogProgress
    from producers.redcap.sync import run_sync

    # run_sync reports each batch as a log record with done/total: that moves the bar.
    with LogProgress(
        "producers.redcap.sync", desc=f"REDCap project {args.project}", unit=" records", enabled=_progress_wanted(args)
    ):
        report = asyncio.run(run_sync(settings, args.project, args.redcap_url, batch_size=args.batch_size))
    print(report.summary())
    return 0


def _cmd_redcap_webhook(settings: Settings, args: argparse.Namespace) -> int:
    from producers.redcap.webhook import serve_webhook

    return serve_webhook(settings)


def _cmd_ehr_load(settings: Settings, args: argparse.Namespace) -> int:
    from producers.ehr.loader import publish_extract

    progress = not args.no_progress and sys.stderr.isatty()
    report = asyncio.run(
        publish_extract(settings, Path(args.path), source=args.source, progress=progress, batch_size=args.batch_size)
    )
    for file in report.files:
        for bad in file.bad_rows[: args.show_bad]:
            print(f"bad row {bad.location}: {bad.reason}", file=sys.stderr)
        if len(file.bad_rows) > args.show_bad:
            print(
                f"... {len(file.bad_rows) - args.show_bad} more bad rows in {file.file} (see the dead-letter topic)",
                file=sys.stderr,
            )
    print(report.summary())
    # Bad rows and bad files are reported and dead-lettered, not a failure of the load;
    # a publish failure raised PublishError above and exits 1.
    return 0


def _cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from api.app import serve_api

    return serve_api(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cohortstream",
        description="Bring a research cohort's DICOM, REDCap and EHR data together as one stream of events.",
    )
    parser.add_argument("--version", action="version", version=f"cohortstream {__version__}")
    parser.add_argument(
        "--env-file",
        default=os.environ.get("COHORTSTREAM_ENV_FILE"),
        help="read settings from this env file too (default: $COHORTSTREAM_ENV_FILE); "
        "the environment wins over the file",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the libraries' INFO logs (httpx, aiokafka, pynetdicom, faust, ...); services "
        "(worker, dicom-scp, api, redcap webhook, annotate worker) always show them",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("settings", help="show the effective settings (secrets masked)")
    p.add_argument("--markdown", action="store_true", help="print the README settings table instead")
    p.set_defaults(func=_cmd_settings)

    p = commands.add_parser("schemas", help="list the Avro event schemas with versions and fingerprints")
    p.set_defaults(func=_cmd_schemas)

    p = commands.add_parser(
        "topics",
        help="list the topic catalogue, or create missing topics (then wait until the broker can serve the "
        "worker lanes' consumer groups)",
    )
    p.add_argument("action", choices=["list", "create"])
    p.set_defaults(func=_cmd_topics)

    p = commands.add_parser(
        "kafka-acls", help="list the Kafka ACLs each role needs (docs/security.md), or create them with --apply"
    )
    p.add_argument("--apply", action="store_true", help="create them on the broker (needs the super user's settings)")
    p.set_defaults(func=_cmd_kafka_acls)

    p = commands.add_parser("events", help="work with encoded events")
    events = p.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    d = events.add_parser("decode", help="decode one single-object-encoded message value to JSON")
    d.add_argument("file", help="file holding the message value, or - for standard input")
    d.set_defaults(func=_cmd_events_decode)

    p = commands.add_parser("staging", help="inspect the staging store of received DICOM files")
    staging = p.add_subparsers(dest="staging_command", metavar="ACTION", required=True)
    sweep = staging.add_parser(
        "sweep", help="report staged files the stream did not finish, remove archived ones, republish the rest"
    )
    sweep.add_argument("--min-age-s", type=float, default=600.0, help="ignore files younger than this (default 600)")
    sweep.add_argument("--dry-run", action="store_true", help="only report; change nothing")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a terminal)")
    sweep.set_defaults(func=_cmd_staging_sweep)

    p = commands.add_parser(
        "worker", help="run the stream worker: every lane of agents as its own process and consumer group"
    )
    p.add_argument(
        "--lane",
        action="append",
        metavar="LANE",
        help="run only this lane (repeat for several; names in cohortstream/lanes.py); one lane runs in this process",
    )
    p.set_defaults(func=_cmd_worker)

    p = commands.add_parser(
        "dicom-scp", help="run the DICOM C-STORE listener (stages each instance, publishes its event)"
    )
    p.add_argument(
        "--one-process",
        action="store_true",
        help="run one listener process whatever COHORTSTREAM_DICOM_SCP_PROCESSES says (how the processes it "
        "starts run; with that setting above 1 the port is bound shared)",
    )
    p.set_defaults(func=_cmd_dicom_scp)

    p = commands.add_parser("redcap", help="REDCap: serve the Data Entry Trigger endpoint, or sync a whole project")
    redcap = p.add_subparsers(dest="redcap_command", metavar="ACTION", required=True)
    r = redcap.add_parser(
        "sync", help="publish every record of a configured project (trigger FULL_SYNC); safe to rerun"
    )
    r.add_argument("--project", required=True, help="REDCap project id (pid) from COHORTSTREAM_REDCAP_PROJECTS")
    r.add_argument("--redcap-url", default=None, help="REDCap base URL, needed when two servers share the project id")
    r.add_argument("--batch-size", type=int, default=100, help="records pulled per API call (default 100)")
    r.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a TTY)"
    )
    r.set_defaults(func=_cmd_redcap_sync)
    r = redcap.add_parser("webhook", help="serve POST /redcap/trigger on COHORTSTREAM_REDCAP_WEBHOOK_HOST/PORT")
    r.set_defaults(func=_cmd_redcap_webhook)

    p = commands.add_parser("ehr", help="EHR extracts: load MIMIC-IV-style CSV tables and FHIR R4 bundles as events")
    ehr = p.add_subparsers(dest="ehr_command", metavar="ACTION", required=True)
    e = ehr.add_parser(
        "load", help="publish every row of PATH (file or directory) as EhrRecord; bad rows go to the dead-letter topic"
    )
    e.add_argument(
        "path", metavar="PATH", help="a MIMIC table (.csv/.csv.gz), a FHIR JSON bundle, or a directory of them"
    )
    e.add_argument(
        "--source", default=None, help="source name in the events (default: mimic-iv for CSV, fhir for JSON)"
    )
    e.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a TTY)"
    )
    e.add_argument("--batch-size", type=int, default=1000, help="events sent before awaiting their acks (default 1000)")
    e.add_argument("--show-bad", type=int, default=20, help="bad rows listed per file on stderr (default 20)")
    e.set_defaults(func=_cmd_ehr_load)

    p = commands.add_parser("api", help="serve the review API and the MONAI Label subset on COHORTSTREAM_API_HOST/PORT")
    p.set_defaults(func=_cmd_api)

    from cohortstream import cli_annotate, cli_api_keys, cli_audit, cli_features, cli_orthanc, cli_subjects

    cli_subjects.add_commands(commands)
    cli_annotate.add_commands(commands)
    cli_orthanc.add_commands(commands)
    __import__("cohortstream.cli_export", fromlist=["add_commands"]).add_commands(commands)
    cli_api_keys.add_commands(commands)
    cli_audit.add_commands(commands)
    cli_features.add_commands(commands)
    return parser


#: The long-running service commands, as (command, action) paths: their logging stays as
#: the settings say, libraries' INFO included.
SERVICE_COMMANDS = frozenset(
    {("worker",), ("dicom-scp",), ("api",), ("redcap", "webhook"), ("annotate", "worker"), ("orthanc", "feed")}
)


def _is_service(args: argparse.Namespace) -> bool:
    path = (args.command,)
    action = getattr(args, f"{args.command.replace('-', '_')}_command", None)
    return path in SERVICE_COMMANDS or (*path, action) in SERVICE_COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cohortstream`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(args.env_file)
    except ValidationError as exc:
        problems = "; ".join(
            f"{env_var_name(str(e['loc'][0])) if e['loc'] else 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"cohortstream: invalid settings: {problems}", file=sys.stderr)
        return 2
    except CohortStreamError as exc:
        print(f"cohortstream: {mask_url_credentials(str(exc))}", file=sys.stderr)
        return 2
    from cohortstream.logs import configure_logging

    # Services log as the settings say, libraries included (their logs are the service's
    # record); one-shot commands keep the libraries' INFO chatter off unless -v.
    configure_logging(settings, quiet_libraries=not (args.verbose or _is_service(args)))
    for name in unknown_env_vars():
        log.warning("ignoring unknown setting variable (typo?)", extra={"variable": name})
    try:
        return int(args.func(settings, args))
    except CohortStreamError as exc:
        print(f"cohortstream: {mask_url_credentials(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
