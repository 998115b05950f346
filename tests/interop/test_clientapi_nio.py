"""Acceptance of the client listener, tried as a new user would.

``twistd fedlib`` runs in a subprocess with ``--client-listen`` and
``--enable-registration``; a matrix-nio client registers and logs in on it and
creates a room; a Synapse user (the interop harness) joins it over federation;
both send a message and each sees the other's in its own ``/sync``.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from fedlib.testing import quiet_dns
from tests.interop.synapse import SynapseServer, SynapseUser, free_port, shared_synapse

try:
    import nio
except ImportError:  # pragma: no cover
    nio = None


class _AsyncioThread:
    """An asyncio loop in its own thread (matrix-nio is asyncio; trial is Twisted)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return threads.deferToThread(future.result, timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class TwistdFedlib:
    """``twistd -n fedlib`` with the client listener, on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.fed_port = free_port()
        self.client_port = free_port()
        self.server_name = f"127.0.0.1:{self.fed_port}"
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start_blocking(self, timeout: float = 60) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        key, cert = self.dir / "tls.key", self.dir / "tls.crt"
        log = open(self.dir / "twistd.log", "ab")  # noqa: SIM115 (owned by the process)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "fedlib",
                "--server-name",
                self.server_name,
                "--data-dir",
                str(self.dir),
                "--self-signed",
                "--no-verify-tls",
                "--listen",
                f"ssl:{self.fed_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                "--client-listen",
                f"tcp:{self.client_port}:interface=127.0.0.1",
                "--enable-registration",
            ],
            cwd=str(self.dir),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                url = self.client_url + "/_matrix/client/versions"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "twistd.log").read_text(errors="replace")[-3000:]
                self.stop_blocking()
                raise RuntimeError(f"twistd fedlib did not start:\n{tail}")
            time.sleep(0.2)

    def stop_blocking(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _bodies(response: Any, room_id: str) -> list[str]:
    room = response.rooms.join.get(room_id)
    if room is None:
        return []
    return [e.body for e in room.timeline.events if isinstance(e, nio.RoomMessageText)]


class NioAgainstTwistdFedlib(unittest.TestCase):
    timeout = 240
    synapse: SynapseServer

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if nio is None:
            raise unittest.SkipTest("matrix-nio is not installed (the test extra)")
        quiet_dns(self)
        self.synapse = shared_synapse()
        if self.synapse.proc is None or self.synapse.proc.poll() is not None:
            yield self.synapse.start()
        self.fedlib = TwistdFedlib(Path(self.mktemp()).resolve())
        yield threads.deferToThread(self.fedlib.start_blocking)
        self.addCleanup(lambda: threads.deferToThread(self.fedlib.stop_blocking))
        self.aio = _AsyncioThread()
        self.addCleanup(self.aio.stop)

    def synapse_user(self, name: str) -> SynapseUser:
        user = self.synapse.register_blocking(f"{name}{secrets.token_hex(3)}")
        self.addCleanup(user.close)
        return user

    @defer.inlineCallbacks
    def test_nio_user_and_synapse_user_talk(self) -> Any:
        url = self.fedlib.client_url
        fedlib_server = self.fedlib.server_name

        async def register_and_login() -> tuple[Any, str]:
            reg_client = nio.AsyncClient(url, "alice")
            reg = await reg_client.register("alice", "correct horse", device_name="nio")
            await reg_client.close()
            assert isinstance(reg, nio.RegisterResponse), reg
            client = nio.AsyncClient(url, "alice")
            login = await client.login("correct horse", device_name="nio")
            assert isinstance(login, nio.LoginResponse), login
            who = await client.whoami()
            assert isinstance(who, nio.WhoamiResponse), who
            return client, who.user_id

        client, alice = yield self.aio.run(register_and_login())
        self.addCleanup(lambda: self.aio.run(client.close()))
        self.assertEqual(alice, f"@alice:{fedlib_server}")

        async def create() -> str:
            resp = await client.room_create(
                name="nio and synapse", preset=nio.RoomPreset.public_chat
            )
            assert isinstance(resp, nio.RoomCreateResponse), resp
            first = await client.sync(timeout=0, full_state=True)
            assert isinstance(first, nio.SyncResponse), first
            return str(resp.room_id)

        room_id = yield self.aio.run(create())

        bob = self.synapse_user("bob")
        yield bob.join(room_id, [fedlib_server])

        async def sync_until(pred: Any, timeout: float = 60) -> Any:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                resp = await client.sync(timeout=1000)
                assert isinstance(resp, nio.SyncResponse), resp
                value = pred(resp)
                if value:
                    return value
            raise TimeoutError("nio: sync condition not met")

        def bob_joined(resp: Any) -> bool:
            room = client.rooms.get(room_id)
            return room is not None and bob.user_id in room.users

        yield self.aio.run(sync_until(bob_joined), timeout=90)

        async def say(body: str) -> None:
            resp = await client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": body}
            )
            assert isinstance(resp, nio.RoomSendResponse), resp

        yield self.aio.run(say("hello from nio"))
        bob_seen: list[str] = []

        def bob_sees(sync: dict[str, Any]) -> bool:
            room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
            for ev in room.get("timeline", {}).get("events", []):
                if ev.get("type") == "m.room.message":
                    bob_seen.append(ev.get("content", {}).get("body"))
            return "hello from nio" in bob_seen

        yield bob.sync_until(bob_sees, timeout=60)

        yield bob.send_message(room_id, "hello from synapse")
        nio_seen: list[str] = []

        def nio_sees(resp: Any) -> bool:
            nio_seen.extend(_bodies(resp, room_id))
            return "hello from synapse" in nio_seen

        yield self.aio.run(sync_until(nio_sees), timeout=90)
        self.assertIn("hello from synapse", nio_seen)
        self.assertIn("hello from nio", bob_seen)

        async def logout() -> None:
            resp = await client.logout()
            assert isinstance(resp, nio.LogoutResponse), resp
            who = await client.whoami()
            assert isinstance(who, nio.WhoamiError), who

        yield self.aio.run(logout())

    @defer.inlineCallbacks
    def test_nio_user_joins_synapse_room_by_alias(self) -> Any:
        """The other direction: a Synapse room, found through its alias (federated
        /query/directory), joined with make_join/send_join, read through /sync and
        /messages."""
        url = self.fedlib.client_url
        carol = self.synapse_user("carol")
        alias_name = f"lobby{secrets.token_hex(3)}"
        created = yield carol.create_room(
            preset="public_chat", room_alias_name=alias_name, name="Synapse lobby"
        )
        room_id = created["room_id"]
        yield carol.send_message(room_id, "before the join")
        alias = f"#{alias_name}:{self.synapse.server_name}"

        async def join() -> Any:
            client = nio.AsyncClient(url, "dave")
            reg = await client.register("dave", "pw", device_name="nio")
            assert isinstance(reg, nio.RegisterResponse), reg
            resolved = await client.room_resolve_alias(alias)
            assert isinstance(resolved, nio.RoomResolveAliasResponse), resolved
            assert resolved.room_id == room_id, resolved
            joined = await client.join(alias)
            assert isinstance(joined, nio.JoinResponse), joined
            return client

        client = yield self.aio.run(join(), timeout=90)
        self.addCleanup(lambda: self.aio.run(client.close()))

        async def first_sync() -> Any:
            resp = await client.sync(timeout=0, full_state=True)
            assert isinstance(resp, nio.SyncResponse), resp
            room = client.rooms[room_id]
            history = await client.room_messages(
                room_id, resp.rooms.join[room_id].timeline.prev_batch, limit=50
            )
            assert isinstance(history, nio.RoomMessagesResponse), history
            found = _bodies(resp, room_id) + [
                e.body for e in history.chunk if isinstance(e, nio.RoomMessageText)
            ]
            return room.display_name, room.users, found

        name, users, found = yield self.aio.run(first_sync())
        # History from before the join comes through /backfill.
        self.assertIn("before the join", found)
        self.assertEqual(name, "Synapse lobby")
        self.assertIn(carol.user_id, users)
        yield carol.send_message(room_id, "after the join")
        seen: list[str] = []

        async def wait_message() -> None:
            deadline = time.monotonic() + 60
            while "after the join" not in seen and time.monotonic() < deadline:
                resp = await client.sync(timeout=1000)
                assert isinstance(resp, nio.SyncResponse), resp
                seen.extend(_bodies(resp, room_id))

        yield self.aio.run(wait_message(), timeout=90)
        self.assertIn("after the join", seen)

        async def reply() -> None:
            resp = await client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": "dave here"}
            )
            assert isinstance(resp, nio.RoomSendResponse), resp

        yield self.aio.run(reply())
        carol_seen: list[str] = []

        def carol_sees(sync: dict[str, Any]) -> bool:
            room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
            for ev in room.get("timeline", {}).get("events", []):
                carol_seen.append(ev.get("content", {}).get("body"))
            return "dave here" in carol_seen

        yield carol.sync_until(carol_sees, timeout=60)

    @defer.inlineCallbacks
    def test_remote_invite_reject_and_knock(self) -> Any:
        """Invites from Synapse reach the nio user's /sync (``on_invite``); one is
        accepted (join through the inviting server), one rejected (make_leave/
        send_leave); a knock goes through make_knock/send_knock."""
        url = self.fedlib.client_url
        frank = self.synapse_user("frank")
        client: Any = None

        async def register() -> str:
            nonlocal client
            client = nio.AsyncClient(url, "gina")
            reg = await client.register("gina", "pw", device_name="nio")
            assert isinstance(reg, nio.RegisterResponse), reg
            first = await client.sync(timeout=0)
            assert isinstance(first, nio.SyncResponse), first
            return str(reg.user_id)

        gina = yield self.aio.run(register())
        self.addCleanup(lambda: self.aio.run(client.close()))
        accepted = (yield frank.create_room(preset="private_chat", name="accept me"))["room_id"]
        rejected = (yield frank.create_room(preset="private_chat", name="reject me"))["room_id"]
        yield frank.invite(accepted, gina)
        yield frank.invite(rejected, gina)

        async def until_invited() -> dict[str, Any]:
            invites: dict[str, Any] = {}
            deadline = time.monotonic() + 60
            while not {accepted, rejected} <= set(invites) and time.monotonic() < deadline:
                resp = await client.sync(timeout=1000)
                assert isinstance(resp, nio.SyncResponse), resp
                invites.update(resp.rooms.invite)
            return invites

        invites = yield self.aio.run(until_invited(), timeout=90)
        self.assertLessEqual({accepted, rejected}, set(invites))
        names = [
            e.name for e in invites[accepted].invite_state if isinstance(e, nio.InviteNameEvent)
        ]
        self.assertEqual(names, ["accept me"])

        async def answer() -> None:
            joined = await client.join(accepted)
            assert isinstance(joined, nio.JoinResponse), joined
            left = await client.room_leave(rejected)
            assert isinstance(left, nio.RoomLeaveResponse), left

        yield self.aio.run(answer(), timeout=90)

        @defer.inlineCallbacks
        def membership(room_id: str) -> Any:
            state = yield frank.state(room_id)
            for ev in state:
                if ev["type"] == "m.room.member" and ev["state_key"] == gina:
                    return ev["content"]["membership"]
            return None

        @defer.inlineCallbacks
        def wait_membership(room_id: str, wanted: str) -> Any:
            deadline = time.monotonic() + 30
            while (yield membership(room_id)) != wanted:
                if time.monotonic() > deadline:
                    self.fail(f"{gina} not {wanted} in {room_id} on Synapse")
                yield task.deferLater(reactor, 0.2, lambda: None)

        yield wait_membership(accepted, "join")
        yield wait_membership(rejected, "leave")

        knockable = (
            yield frank.create_room(
                preset="private_chat",
                room_version="10",
                initial_state=[
                    {
                        "type": "m.room.join_rules",
                        "state_key": "",
                        "content": {"join_rule": "knock"},
                    }
                ],
            )
        )["room_id"]

        async def knock() -> Any:
            resp = await client.room_knock(knockable, reason="let me in")
            assert isinstance(resp, nio.RoomKnockResponse), resp
            raw = await client.send(
                "GET",
                f"/_matrix/client/v3/sync?timeout=0&access_token={client.access_token}",
            )
            return await raw.json()

        sync = yield self.aio.run(knock(), timeout=90)
        self.assertIn(knockable, sync["rooms"]["knock"])
        yield wait_membership(knockable, "knock")

        # And the other way: the nio user invites the Synapse user (/invite handshake).
        async def invite_frank() -> str:
            created = await client.room_create(name="from gina")
            assert isinstance(created, nio.RoomCreateResponse), created
            invited = await client.room_invite(created.room_id, frank.user_id)
            assert isinstance(invited, nio.RoomInviteResponse), invited
            return str(created.room_id)

        own_room = yield self.aio.run(invite_frank(), timeout=90)

        def frank_invited(sync: dict[str, Any]) -> bool:
            return own_room in sync.get("rooms", {}).get("invite", {})

        yield frank.sync_until(frank_invited, timeout=60)
        yield frank.join(own_room, [self.fedlib.server_name])

        async def frank_joined() -> bool:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await client.sync(timeout=1000)
                room = client.rooms.get(own_room)
                if room is not None and frank.user_id in room.users:
                    return True
            return False

        self.assertTrue((yield self.aio.run(frank_joined(), timeout=90)))
