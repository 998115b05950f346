"""A complete, minimal homeserver on fedlib: users, rooms, messages, federation.

Run:  python docs/examples/minimal_homeserver.py 127.0.0.1:8448 8008
It federates on 8448 (TLS, self-signed, data in ./mini-data) and offers a tiny
JSON API on 127.0.0.1:8008 for its users (no auth: a demonstration):

  POST /rooms            {"user": "alice", "name": "..."}         -> {"room_id"}
  POST /join             {"user": "alice", "room": "!id", "via": ["server"]}
  POST /send             {"user": "alice", "room": "!id", "body": "hi"}
  GET  /messages?room=!id                                           -> [events]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.python import log
from twisted.web import resource, server

from fedlib.config import FederationConfig, TlsOptions
from fedlib.crypto.keys import load_or_create_signing_key
from fedlib.hooks import NullHooks
from fedlib.service import FederationService
from fedlib.storage import open_store
from fedlib.tls import ensure_self_signed


class MiniHooks(NullHooks):
    """What the homeserver learns from federation: its timeline and invites."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self.timeline: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.invites: list[tuple[str, str]] = []

    def on_new_pdus(self, room_id: str, pdus: Any) -> None:
        for pdu in pdus:
            self.timeline[room_id].append(dict(pdu.event))

    def on_invite(self, room_version: str, event: Any, invite_room_state: Any) -> bool:
        self.invites.append((event["room_id"], event["state_key"]))
        return True  # Accept: the user decides later by joining or leaving.

    def query_profile(self, user_id: str, field: str | None) -> Any:
        return {"displayname": user_id[1:].split(":")[0]}


class Api(resource.Resource):
    """The homeserver's own (toy) client API."""

    isLeaf = True

    def __init__(self, fed: FederationService, hooks: MiniHooks) -> None:
        super().__init__()
        self.fed, self.hooks = fed, hooks

    def user(self, name: str) -> str:
        return f"@{name}:{self.fed.config.server_name}"

    def render(self, request: Any) -> Any:
        d = defer.ensureDeferred(self.handle(request))

        def reply(result: tuple[int, Any]) -> None:
            request.setResponseCode(result[0])
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps(result[1]).encode())
            request.finish()

        def fail(f: Any) -> None:
            reply((getattr(f.value, "code", 500), {"error": f.getErrorMessage()}))

        d.addCallbacks(reply, fail)
        return server.NOT_DONE_YET

    async def handle(self, request: Any) -> tuple[int, Any]:
        path = request.path.decode()
        if request.method == b"GET" and path == "/messages":
            room = request.args[b"room"][0].decode()
            return 200, self.hooks.timeline.get(room, [])
        body = json.loads(request.content.read() or b"{}")
        user = self.user(body["user"])
        if path == "/rooms":
            room_id = await self.fed.create_room(user, name=body.get("name"), preset="public_chat")
            return 200, {"room_id": room_id}
        if path == "/join":
            event_id = await self.fed.join_room(body["room"], user, body.get("via", []))
            return 200, {"event_id": event_id}
        if path == "/send":
            content = {"msgtype": "m.text", "body": body["body"]}
            event_id = await self.fed.send_event(body["room"], user, "m.room.message", content)
            return 200, {"event_id": event_id}
        return 404, {"error": "unknown endpoint"}


async def build(server_name: str, data_dir: str = "mini-data") -> tuple[Any, MiniHooks]:
    """The federation service (TLS on the server name's port) and its hooks."""
    import os

    os.makedirs(data_dir, exist_ok=True)
    ensure_self_signed(f"{data_dir}/tls.crt", f"{data_dir}/tls.key", server_name.split(":")[0])
    port = server_name.rsplit(":", 1)[1] if ":" in server_name else "8448"
    hooks = MiniHooks(server_name)
    config = FederationConfig(
        server_name,
        load_or_create_signing_key(f"{data_dir}/signing.key"),
        await open_store(f"sqlite:{data_dir}/homeserver.db"),
        hooks=hooks,
        tls=TlsOptions(verify=False),  # Self-signed peers on a test network.
        listen=(f"ssl:{port}:privateKey={data_dir}/tls.key:certKey={data_dir}/tls.crt",),
    )
    return FederationService(config), hooks


async def main(server_name: str, api_port: int) -> None:
    fed, hooks = await build(server_name)
    await fed.startService()
    site = server.Site(Api(fed, hooks))
    api = endpoints.TCP4ServerEndpoint(reactor, api_port, interface="127.0.0.1")
    await api.listen(site)
    reactor.addSystemEventTrigger("before", "shutdown", fed.stopService)
    print(f"{server_name} federating; API on http://127.0.0.1:{api_port}")


if __name__ == "__main__":
    log.startLogging(sys.stdout)
    defer.ensureDeferred(main(sys.argv[1], int(sys.argv[2])))
    reactor.run()
