"""``cohortstream api-keys create|list|revoke``: the API's keys, managed in MongoDB directly.

Whoever can run this with the deployment's settings can reach the database anyway, so
the command needs no key itself; it is how the first admin key is made. ``create``
prints the key on standard output exactly once (only its hash is stored); ``list``
never shows secrets; ``revoke`` takes effect in running APIs within
``COHORTSTREAM_API_KEY_CACHE_TTL_S`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cohortstream.settings import Settings

__all__ = ["add_commands"]

T = TypeVar("T")


def _with_store(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from api.keys import KeyStore
    from cohortstream.mongo import mongo_client, mongo_database

    async def run() -> T:
        client = mongo_client(settings)
        try:
            return await work(KeyStore(mongo_database(client, settings)))
        finally:
            await client.close()

    return asyncio.run(run())


def _cmd_create(settings: Settings, args: argparse.Namespace) -> int:
    from api.principals import Role

    issued = _with_store(settings, lambda store: store.create(args.name, Role(args.role)))
    print(issued.key)
    print(
        f"API key {issued.key_id} ({issued.role.value}, {issued.name!r}) created; the key above is shown only "
        "this once: send it as 'Authorization: Bearer <key>'",
        file=sys.stderr,
    )
    return 0


def _cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    keys = _with_store(settings, lambda store: store.list())
    for doc in keys:
        print(
            json.dumps(
                {
                    "key_id": doc["_id"],
                    "name": doc.get("name"),
                    "role": doc.get("role"),
                    "created_at": doc.get("created_at"),
                    "revoked_at": doc.get("revoked_at"),
                },
                default=str,
            )
        )
    return 0


def _cmd_revoke(settings: Settings, args: argparse.Namespace) -> int:
    changed = _with_store(settings, lambda store: store.revoke(args.key_id))
    print(f"revoked {args.key_id}" if changed else f"{args.key_id} was already revoked")
    return 0


def add_commands(commands: Any) -> None:
    """Attach ``api-keys`` to the top-level subcommands."""
    p = commands.add_parser("api-keys", help="API keys: create (prints the key once), list, revoke")
    keys = p.add_subparsers(dest="api_keys_command", metavar="ACTION", required=True)
    a = keys.add_parser("create", help="create a key and print it once (only its hash is stored)")
    a.add_argument("--name", required=True, help="who or what uses the key (recorded as reviewer by default)")
    a.add_argument(
        "--role",
        required=True,
        choices=["researcher", "annotator", "admin"],
        help="researcher: read-only; annotator: also runs inference and saves corrections; admin: everything",
    )
    a.set_defaults(func=_cmd_create)
    a = keys.add_parser("list", help="every key as JSON lines, without secrets")
    a.set_defaults(func=_cmd_list)
    a = keys.add_parser("revoke", help="revoke a key by its id (as `list` shows)")
    a.add_argument("key_id", help="the key's id: the 12 hex digits after cs_")
    a.set_defaults(func=_cmd_revoke)
