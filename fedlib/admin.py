"""Administration commands for a ``twistd fedlib`` data directory.

``python -m fedlib.admin register-user --data-dir DIR USER [--password P]``
creates an account of the client API (``DIR/clientapi.db``), whether the server
is running or not (SQLite in WAL mode lets both write). Without ``--password``
the password is read from standard input (prompted for on a terminal). ``USER``
is a full user ID, or a localpart when the server has run with a client
listener once (it records its name) or ``--server-name`` is given.

Exit status: 0 created, 1 the user exists, 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer

__all__ = ["main", "register_user"]


@defer.inlineCallbacks
def register_user(
    reactor: Any,
    data_dir: str,
    user: str,
    password: str,
    server_name: str | None = None,
    rounds: int | None = None,
) -> Any:
    """Deferred[str]: the new user's ID. Fails with ``ValueError`` (bad user ID,
    unknown server name) or ``KeyError`` (taken)."""
    from fedlib.clientapi.passwords import DEFAULT_ROUNDS, PasswordHasher
    from fedlib.clientapi.store import SQLiteClientStore
    from fedlib.ids import is_valid_local_user_id

    path = Path(data_dir)
    if not path.is_dir():
        raise ValueError(f"{data_dir} is not a directory")
    store = SQLiteClientStore(str(path / "clientapi.db"), reactor)
    try:
        if not user.startswith("@"):
            name = server_name or (yield store.get_meta("server_name"))
            if not name:
                raise ValueError(
                    "Give a full user ID (@user:server) or --server-name: the server has "
                    "not recorded its name here yet"
                )
            user = f"@{user}:{name}"
        if not is_valid_local_user_id(user):
            raise ValueError(f"Invalid user ID {user!r} (localpart: a-z 0-9 . _ = - / +)")
        if not password:
            raise ValueError("The password must not be empty")
        hasher = PasswordHasher(rounds or DEFAULT_ROUNDS)
        hashed = yield hasher.hash(password)
        created = yield store.create_account(user, hashed, int(time.time() * 1000))
        if not created:
            raise KeyError(user)
        return user
    finally:
        yield store.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedlib.admin")
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register-user", help="Create a user of the client API.")
    reg.add_argument("--data-dir", required=True, help="The twistd fedlib data directory.")
    reg.add_argument("--server-name", help="Server name, when USER is a localpart.")
    reg.add_argument("--password", help="The password (default: read from standard input).")
    reg.add_argument("user", metavar="USER", help="@user:server or a localpart.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    password = args.password
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    outcome: dict[str, int] = {}

    async def run(reactor: Any) -> None:
        try:
            user_id = await register_user(
                reactor, args.data_dir, args.user, password, args.server_name
            )
        except KeyError as e:
            print(f"User {e.args[0]} already exists", file=sys.stderr)
            outcome["code"] = 1
        except ValueError as e:
            print(str(e), file=sys.stderr)
            outcome["code"] = 2
        else:
            print(f"Created {user_id}")
            outcome["code"] = 0

    from twisted.internet import reactor

    def go() -> None:
        d = defer.ensureDeferred(run(reactor))
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    # Not task.react: it would exit with its own status instead of returning ours.
    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return outcome.get("code", 2)


if __name__ == "__main__":
    sys.exit(main())
