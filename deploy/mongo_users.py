#!/usr/bin/env python3
"""Create the MongoDB users of a server started with authentication (idempotent).

``root`` (every right; for operators) is created through the localhost exception while
the server has no user yet; then, authenticated as root, the application's user with
``readWrite`` on its one database only (least privilege: it cannot create users, drop
other databases or read them). Passwords are read from files, never from the command
line. Used by ``deploy/stack.sh`` in secure mode (secantusd-rs ``--auth``); docker-compose
does the same with ``deploy/mongo/create-app-user.js`` at MongoDB's first start.

Usage: mongo_users.py --port P --root-password-file F --app-user U --app-password-file F --database D
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure

_DUPLICATE_USER = 51003


def _create(client: MongoClient, user: str, password: str, roles: list[dict[str, str]]) -> None:
    try:
        client.admin.command("createUser", user, pwd=password, roles=roles)
    except OperationFailure as exc:
        if exc.code != _DUPLICATE_USER and "already exists" not in str(exc):
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root-password-file", type=Path, required=True)
    parser.add_argument("--app-user", required=True)
    parser.add_argument("--app-password-file", type=Path, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--tls-ca", type=Path, default=None, help="connect with TLS, verifying the server with this CA")
    args = parser.parse_args(argv)
    root_pw = args.root_password_file.read_text().strip()
    app_pw = args.app_password_file.read_text().strip()
    address = f"{args.host}:{args.port}"
    tls = {"tls": True, "tlsCAFile": str(args.tls_ca)} if args.tls_ca else {}

    anonymous: MongoClient = MongoClient(f"mongodb://{address}/", serverSelectionTimeoutMS=10_000, **tls)
    try:
        _create(anonymous, "root", root_pw, [{"role": "root", "db": "admin"}])
    except OperationFailure:
        pass  # users exist already: the localhost exception is closed, root was made before
    finally:
        anonymous.close()
    root: MongoClient = MongoClient(
        f"mongodb://{address}/",
        username="root",
        password=root_pw,
        authSource="admin",
        serverSelectionTimeoutMS=10_000,
        **tls,
    )
    try:
        _create(root, args.app_user, app_pw, [{"role": "readWrite", "db": args.database}])
    except OperationFailure as exc:
        print(f"mongo_users: {exc.details.get('errmsg') if exc.details else exc}", file=sys.stderr)
        return 1
    finally:
        root.close()
    print(f"mongo_users: root and {args.app_user} (readWrite on {args.database}) present", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
