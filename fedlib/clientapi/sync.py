"""``GET /sync`` and ``GET /rooms/{roomId}/messages``.

Both read positions of the client API's own event stream
(:class:`fedlib.clientapi.store.IClientStore`) and the events themselves from
the federation store. Tokens are ``s<pos>``: the point just after stream
position ``pos``. ``/messages`` walks the stream, then, once the stream has
nothing older (history from before this server joined), the room DAG as stored
(``d<event_id>``: the events before that one).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from fedlib.auth.rules import check_auth, check_auth_events_list
from fedlib.canonical import decode_json
from fedlib.clientapi.hooks import strip_event
from fedlib.errors import MatrixError
from fedlib.events.room_versions import get_room_version
from fedlib.storage.interface import EventStatus, PersistItem

if TYPE_CHECKING:
    from fedlib.clientapi.api import ClientAPI
    from fedlib.clientapi.resource import Call
    from fedlib.clientapi.store import Membership, StreamEntry

__all__ = ["paginate", "parse_token", "sync"]

log = logging.getLogger(__name__)

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 100
#: The longest a /sync may wait for news (ms).
MAX_SYNC_TIMEOUT_MS = 5 * 60 * 1000


def _bad_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def parse_token(token: str) -> int:
    """A stream position from an ``s<pos>`` token (plain digits accepted too)."""
    text = token[1:] if token.startswith("s") else token
    if not text.isdigit() or len(text) > 18:
        raise _bad_param(f"Invalid token {token!r}")
    return int(text)


async def _timeline_limit(api: ClientAPI, call: Call) -> int:
    spec = call.query.get("filter")
    if spec is None:
        return DEFAULT_TIMELINE_LIMIT
    if spec.lstrip().startswith("{"):
        try:
            filt = decode_json(spec)
        except MatrixError:
            raise _bad_param("filter is not valid JSON") from None
    else:
        filt = await api.store.get_filter(call.user_id, spec)
        if filt is None:
            raise _bad_param(f"Unknown filter {spec!r}")
    limit = (
        filt.get("room", {}).get("timeline", {}).get("limit")
        if isinstance(filt, dict)
        and isinstance(filt.get("room", {}), dict)
        and isinstance(filt.get("room", {}).get("timeline", {}), dict)
        else None
    )
    if limit is None:
        return DEFAULT_TIMELINE_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise _bad_param("filter room.timeline.limit must be a non-negative integer")
    return min(limit, MAX_TIMELINE_LIMIT)


async def sync(api: ClientAPI, call: Call) -> dict[str, Any]:
    """Initial (no ``since``) or incremental sync; an incremental one with nothing
    new waits up to ``timeout`` ms for news."""
    since_text = call.query.get("since")
    since = parse_token(since_text) if since_text else None
    timeout_text = call.query.get("timeout", "0")
    if not timeout_text.isdigit():
        raise _bad_param("timeout must be a non-negative integer")
    timeout_ms = min(int(timeout_text), MAX_SYNC_TIMEOUT_MS)
    full_state = call.query.get("full_state") == "true"
    limit = await _timeline_limit(api, call)
    deadline = api.clock.seconds() + timeout_ms / 1000
    while True:
        head: int = await api.store.get_head()
        if since is not None and since > head:
            # A token from the future (another database?): answer from now on.
            since = head
        response, news = await _build(api, call.user_id, since, head, limit, full_state)
        if news or since is None or full_state:
            return response
        if api.notifier.head > head:
            continue
        remaining = deadline - api.clock.seconds()
        if remaining <= 0:
            return response
        waiter = api.notifier.wait()
        waiter.addTimeout(remaining, api.clock)
        with contextlib.suppress(defer.TimeoutError):
            await waiter


async def _events(api: ClientAPI, entries: Sequence[StreamEntry]) -> list[dict[str, Any]]:
    from fedlib.clientapi.api import client_event

    stored = await api.fed.store.get_events([e.event_id for e in entries])
    out = []
    for entry in entries:
        ev = stored.get(entry.event_id)
        if ev is not None and not ev.rejected:
            out.append(client_event(ev))
    return out


async def _build(
    api: ClientAPI,
    user_id: str,
    since: int | None,
    head: int,
    limit: int,
    full_state: bool,
) -> tuple[dict[str, Any], bool]:
    rooms: dict[str, dict[str, Any]] = {"join": {}, "invite": {}, "leave": {}, "knock": {}}
    news = False
    memberships: list[Membership] = await api.store.get_memberships(user_id)
    for m in memberships:
        if m.pos > head:
            continue  # After this sync's snapshot: the next one reports it.
        changed = since is None or m.pos > since
        if m.membership == "join":
            section = await _joined_room(api, m, since, head, limit, full_state or changed)
            if section is not None:
                rooms["join"][m.room_id] = section
                news = news or changed or bool(section["timeline"]["events"])
        elif m.membership in ("invite", "knock") and changed:
            key = "invite_state" if m.membership == "invite" else "knock_state"
            rooms[m.membership][m.room_id] = {key: {"events": await _stripped(api, m)}}
            news = True
        elif m.membership in ("leave", "ban") and changed and since is not None:
            entries = await api.store.get_room_entries(m.room_id, since, m.pos, limit)
            entries.reverse()
            rooms["leave"][m.room_id] = {
                "timeline": {
                    "events": await _events(api, entries),
                    "limited": False,
                    "prev_batch": f"s{entries[0].pos - 1}" if entries else f"s{m.pos}",
                },
                "state": {"events": []},
                "account_data": {"events": []},
            }
            news = True
    response = {
        "next_batch": f"s{head}",
        "rooms": rooms,
        "presence": {"events": []},
        "account_data": {"events": []},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
    }
    return response, news


async def _joined_room(
    api: ClientAPI,
    m: Membership,
    since: int | None,
    head: int,
    limit: int,
    whole_state: bool,
) -> dict[str, Any] | None:
    from fedlib.clientapi.api import client_event

    after = since or 0
    entries = await api.store.get_room_entries(m.room_id, after, head, limit + 1)
    if not entries and not whole_state:
        return None
    limited = len(entries) > limit
    entries = entries[:limit]
    entries.reverse()
    timeline = await _events(api, entries)
    in_timeline = {e["event_id"] for e in timeline}
    state: list[dict[str, Any]] = []
    if whole_state or limited:
        current = await api.fed.store.get_current_state_events(m.room_id)
        wanted: set[str] | None = None
        if not whole_state:
            # Only the state that changed in the gap the limited timeline skips.
            upto = entries[0].pos - 1 if entries else head
            gap = await api.store.get_room_entries(m.room_id, after, upto, 100_000)
            wanted = {e.event_id for e in gap}
        state = [
            client_event(ev)
            for _, ev in sorted(current.items())
            if ev.event_id not in in_timeline and (wanted is None or ev.event_id in wanted)
        ]
    return {
        "timeline": {
            "events": timeline,
            "limited": limited,
            "prev_batch": f"s{entries[0].pos - 1}" if entries else f"s{head}",
        },
        "state": {"events": state},
        "ephemeral": {"events": []},
        "account_data": {"events": []},
        "unread_notifications": {},
        "summary": {},
    }


async def _stripped(api: ClientAPI, m: Membership) -> list[Mapping[str, Any]]:
    events: list[Mapping[str, Any]] = list(m.stripped_state)
    own = m.event
    if not events:
        events = list(await api.stripped_room_state(m.room_id))
    if own is None:
        current = await api.fed.store.get_current_state_events(m.room_id, ["m.room.member"])
        stored = current.get(("m.room.member", m.user_id))
        own = stored.event if stored is not None else None
    if own is not None:
        events.append(strip_event(own))
    return events


async def paginate(
    api: ClientAPI, room_id: str, start: str | None, direction: str, limit: int
) -> dict[str, Any]:
    """A ``/messages`` page of ``room_id`` from ``start`` in ``direction``."""
    from fedlib.clientapi.api import client_event

    head: int = await api.store.get_head()
    if start is not None and start.startswith("d"):
        if direction == "f":
            # Forward from a point in pre-join history: the stream holds the rest.
            return {"chunk": [], "start": start}
        return await _paginate_dag(api, room_id, start[1:], start, limit)
    pos = parse_token(start) if start is not None else (head if direction == "b" else 0)
    if direction == "f":
        entries = await api.store.get_room_entries(room_id, pos, head, limit, newest_first=False)
        chunk = await _events(api, entries)
        out: dict[str, Any] = {"chunk": chunk, "start": f"s{pos}"}
        if entries:
            out["end"] = f"s{entries[-1].pos}"
        return out
    entries = await api.store.get_room_entries(room_id, 0, pos, limit)
    chunk = await _events(api, entries)
    out = {"chunk": chunk, "start": f"s{pos}"}
    if len(entries) == limit and entries:
        out["end"] = f"s{entries[-1].pos - 1}"
        return out
    # The stream has nothing older: continue in the stored DAG before its oldest event.
    oldest = entries[-1] if entries else None
    if oldest is None:
        # Everything the DAG holds before the room's first stream entry is older
        # than any token, this one included.
        first = await api.store.get_room_entries(room_id, 0, head, 1, newest_first=False)
        oldest = first[0] if first else None
        if oldest is None:
            return out
    more = await _older(api, room_id, oldest.event_id, limit - len(chunk))
    out["chunk"] = chunk + [client_event(e) for e in more]
    if more:
        out["end"] = f"d{more[-1].event_id}"
    elif limit - len(chunk) == 0 and chunk:
        out["end"] = f"d{oldest.event_id}"
    return out


async def _dag_before(api: ClientAPI, room_id: str, event_id: str, limit: int) -> list[Any]:
    if limit <= 0:
        return []
    events = await api.fed.store.backfill(room_id, [event_id], limit + 1)
    return [e for e in events if e.event_id != event_id and not e.rejected][:limit]


async def _older(api: ClientAPI, room_id: str, event_id: str, limit: int) -> list[Any]:
    """Up to ``limit`` events before ``event_id``: from the store, and when its
    DAG ends at events it never received, from other servers (``/backfill``)."""
    more = await _dag_before(api, room_id, event_id, limit)
    if len(more) < limit:
        last = more[-1].event_id if more else event_id
        if await _backfill_remote(api, room_id, last, limit - len(more)):
            more += await _dag_before(api, room_id, last, limit - len(more))
    return more


async def _backfill_remote(api: ClientAPI, room_id: str, event_id: str, limit: int) -> bool:
    """Fetch history before ``event_id`` from the room's other servers and store it.

    The events come through :attr:`FederationService.gaps` (signatures and
    hashes checked); each must also pass the auth rules against its own auth
    events, which must be stored and not rejected (events whose auth events are
    unknown here are left out). They are stored as outliers: history to show,
    never part of the room's state or forward extremities.
    """
    gaps = getattr(api.fed, "gaps", None)
    store = api.fed.store
    stored = (await store.get_events([event_id])).get(event_id)
    if gaps is None or stored is None:
        return False
    prevs = [p for p in stored.event.get("prev_events", []) if isinstance(p, str)]
    prevs += [p[0] for p in stored.event.get("prev_events", []) if isinstance(p, list) and p]
    if not prevs or len(await store.have_seen(prevs)) == len(prevs):
        return False  # The room's beginning, or nothing missing right here.
    servers = sorted(set(await store.get_joined_servers(room_id)) - {api.server_name})
    version = stored.room_version
    for origin in servers[:3]:
        try:
            results = await gaps.backfill(origin, room_id, [event_id], max(limit, 10))
        except defer.CancelledError:
            raise
        except Exception as e:
            log.info("Backfill of %s from %s failed: %s", room_id, origin, e)
            continue
        items = []
        for result in results:
            event, eid = result.event, result.event_id
            if event is not None and eid is not None and await _authorised(api, version, event):
                items.append(PersistItem(event, eid, EventStatus.OUTLIER))
        if items:
            await store.persist_events(room_id, items)
            return True
    return False


async def _authorised(api: ClientAPI, room_version: str, event: Mapping[str, Any]) -> bool:
    auth_ids = [a for a in event.get("auth_events", []) if isinstance(a, str)]
    auth_ids += [a[0] for a in event.get("auth_events", []) if isinstance(a, list) and a]
    store = api.fed.store
    stored = await store.get_events(auth_ids)
    if len(stored) != len(set(auth_ids)) or any(e.rejected for e in stored.values()):
        return False
    create = None
    if get_room_version(room_version).room_id_is_create_hash:
        state = await store.get_current_state_events(event.get("room_id", ""), ["m.room.create"])
        found = state.get(("m.room.create", ""))
        create = found.event if found is not None else None
    try:
        auth_map = check_auth_events_list(
            room_version, event, [e.event for e in stored.values()], create_event=create
        )
        check_auth(room_version, event, auth_map)
    except MatrixError:
        return False
    return True


async def _paginate_dag(
    api: ClientAPI, room_id: str, event_id: str, start: str, limit: int
) -> dict[str, Any]:
    from fedlib.clientapi.api import client_event

    stored = await api.fed.store.get_events([event_id])
    if event_id not in stored or stored[event_id].room_id != room_id:
        raise _bad_param(f"Invalid token {start!r}")
    more = await _older(api, room_id, event_id, limit)
    out: dict[str, Any] = {"chunk": [client_event(e) for e in more], "start": start}
    if more:
        out["end"] = f"d{more[-1].event_id}"
    return out
