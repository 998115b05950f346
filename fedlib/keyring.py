"""Our keys and remote servers' keys.

:class:`IKeyring` is what the server and client depend on; the implementation
fetches remote keys directly or through notaries and caches them in storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from fedlib.crypto.keys import (
    decode_verify_key_base64,
    encode_verify_key_base64,
    get_verify_key,
    key_id,
    split_key_id,
)
from fedlib.crypto.signing import (
    required_signers,
    sign_json,
    verify_event_signatures,
    verify_json,
)
from fedlib.errors import MatrixError, SignatureError
from fedlib.events.room_versions import get_room_version

log = Logger()


class IKeyring(Interface):
    """Finds verify keys of remote servers and checks signatures with them.

    Every method returns a Deferred. Failures are :class:`fedlib.errors.SignatureError`
    (a missing, unknown or bad signature or key) or ``MatrixError`` for transport
    problems that leave the key unknown.
    """

    def get_verify_keys(
        server_name: str, key_ids: Iterable[str], valid_at_ts: int | None = None
    ) -> Any:
        """Deferred ``dict[key_id, VerifyKey]`` of those of ``key_ids`` that are known
        (fetching what is not cached) and, when ``valid_at_ts`` is given, valid at that
        time (old keys count for the times they were valid)."""

    def verify_json_for_server(
        server_name: str, obj: Mapping[str, Any], valid_at_ts: int | None = None
    ) -> Any:
        """Deferred that fires ``None`` when ``obj`` carries a valid signature of
        ``server_name``, or fails with ``SignatureError``."""

    def verify_event(room_version: str, event: Mapping[str, Any]) -> Any:
        """Deferred that fires ``None`` when every server that must sign ``event`` did
        (``fedlib.crypto.signing.required_signers``), with keys valid at its
        ``origin_server_ts`` where the room version demands it."""


# -- implementation ---------------------------------------------------------------------

#: Servers must treat keys as valid for at most this long after fetching them
#: (spec: "the lesser of [valid_until_ts] and 7 days into the future").
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
#: After a fetch that did not yield a wanted key, the same server is not asked again
#: for this many seconds (a forged key ID must not make us hammer its server).
REFETCH_INTERVAL = 30.0
#: Most servers whose keys are kept in memory.
MAX_CACHED_SERVERS = 50_000


@attrs.frozen(slots=True)
class FetchedKey:
    """A verify key of a remote server and how long it may be used.

    A current key (from ``verify_keys``) is valid up to ``valid_until_ts`` inclusive
    (already capped at fetch time + 7 days); an old key (``old_verify_keys``) is valid
    for times before ``expired_ts``.
    """

    key_id: str
    verify_key: Any
    valid_until_ts: int
    expired_ts: int | None = None

    def valid_at(self, ts: int) -> bool:
        if self.expired_ts is not None:
            return ts < self.expired_ts
        return ts <= self.valid_until_ts


@attrs.frozen(slots=True)
class Notary:
    """A server trusted to vouch for others' keys (``/_matrix/key/v2/query``).

    ``verify_keys`` pins the notary's own keys (``{key_id: VerifyKey}``); when empty,
    its keys are fetched from it directly.
    """

    server_name: str
    verify_keys: Mapping[str, Any] = attrs.field(factory=dict)


def _decode_key(server_name: str, kid: str, data: Any) -> Any | None:
    """The verify key in ``data`` (``{"key": b64}``), ``None`` for an unknown algorithm."""
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise SignatureError(f"Key {kid} of {server_name} is malformed")
    alg, version = split_key_id(kid)
    if alg != "ed25519":
        return None
    return decode_verify_key_base64(alg, version, data["key"])


def parse_key_response(
    server_name: str, response: Any, now_ms: int
) -> tuple[dict[str, FetchedKey], int]:
    """Check a ``/_matrix/key/v2/server`` object of ``server_name`` and return its keys.

    The object must name ``server_name``, carry an integer ``valid_until_ts``, and be
    signed by every ed25519 key in its ``verify_keys``. Returns the keys (current and
    old) and the capped ``valid_until_ts``. Raises :class:`SignatureError`.
    """
    if not isinstance(response, dict):
        raise SignatureError(f"Key response for {server_name} is not an object")
    if response.get("server_name") != server_name:
        raise SignatureError(
            f"Key response names {str(response.get('server_name'))[:100]!r}, not {server_name}"
        )
    valid_until = response.get("valid_until_ts")
    if not isinstance(valid_until, int) or isinstance(valid_until, bool):
        raise SignatureError(f"Key response for {server_name} has no valid_until_ts")
    capped = min(valid_until, now_ms + MAX_KEY_VALIDITY_MS)
    verify_keys = response.get("verify_keys")
    if not isinstance(verify_keys, dict):
        raise SignatureError(f"Key response for {server_name} has no verify_keys")
    keys: dict[str, FetchedKey] = {}
    for kid, data in verify_keys.items():
        key = _decode_key(server_name, kid, data)
        if key is not None:
            keys[kid] = FetchedKey(kid, key, capped)
    if not keys:
        raise SignatureError(f"Key response for {server_name} has no ed25519 verify key")
    # Each current key must have signed: proves the server holds every key it lists.
    for fetched in keys.values():
        verify_json(response, server_name, fetched.verify_key)
    old = response.get("old_verify_keys", {})
    if not isinstance(old, dict):
        raise SignatureError(f"old_verify_keys of {server_name} is not an object")
    for kid, data in old.items():
        if kid in keys:
            continue
        key = _decode_key(server_name, kid, data)
        expired = data.get("expired_ts")
        if not isinstance(expired, int) or isinstance(expired, bool):
            raise SignatureError(f"Old key {kid} of {server_name} has no expired_ts")
        if key is not None:
            keys[kid] = FetchedKey(kid, key, min(expired, capped), expired_ts=expired)
    return keys, capped


@implementer(IKeyring)
class Keyring:
    """Fetches, caches and uses remote servers' keys.

    :param client: a :class:`~fedlib.client.transport.FederationClient` (anything with
        ``get_server_keys`` and ``query_keys_via_notary``).
    :param clock: time source (the reactor).
    :param notaries: servers asked, in order, when the origin itself does not give
        the key (or when ``fetch_directly`` is off).
    :param fetch_directly: ask the origin first.
    :param local_server_name: our own name; with ``local_keys`` (``{key_id:
        FetchedKey}``), our keys are answered without any request.
    :param store: an :class:`~fedlib.storage.interface.IFederationStore`; fetched keys
        (and the signed objects they came from, for notary answers) are persisted there
        and read back on a cache miss, so a restart does not refetch every key.
    """

    def __init__(
        self,
        client: Any,
        clock: IReactorTime,
        *,
        notaries: Iterable[Notary] = (),
        fetch_directly: bool = True,
        local_server_name: str | None = None,
        local_keys: Mapping[str, FetchedKey] | None = None,
        refetch_interval: float = REFETCH_INTERVAL,
        store: Any = None,
    ) -> None:
        self._client = client
        self._db = store
        # Servers whose stored keys have been read into memory already.
        self._loaded: set[str] = set()
        self._clock = clock
        self.notaries = tuple(notaries)
        self.fetch_directly = fetch_directly
        self._local_name = local_server_name
        self._local_keys = dict(local_keys or {})
        self._refetch_interval = refetch_interval
        self._keys: dict[str, dict[str, FetchedKey]] = {}
        #: The last verified key object of each server (what a notary passes on).
        self._raw: dict[str, tuple[int, dict[str, Any]]] = {}
        self._last_fetch: dict[str, float] = {}
        self._last_error: dict[str, MatrixError] = {}
        self._inflight: dict[str, list[defer.Deferred[None]]] = {}
        self._wanted: dict[str, dict[str, int]] = {}

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    # -- cache ---------------------------------------------------------------------------

    def _known(self, server_name: str) -> dict[str, FetchedKey]:
        if self._local_name is not None and server_name == self._local_name:
            return self._local_keys
        return self._keys.get(server_name, {})

    def _store(self, server_name: str, keys: Mapping[str, FetchedKey]) -> None:
        current = self._keys.pop(server_name, {})
        for kid, fetched in keys.items():
            previous = current.get(kid)
            # Never let a later answer shorten what we already learnt about a key
            # unless it marks it expired.
            if (
                previous is None
                or fetched.expired_ts is not None
                or fetched.valid_until_ts >= previous.valid_until_ts
            ):
                current[kid] = fetched
        while len(self._keys) >= MAX_CACHED_SERVERS:
            del self._keys[next(iter(self._keys))]
        self._keys[server_name] = current

    def add_keys(self, server_name: str, keys: Mapping[str, FetchedKey]) -> None:
        """Put already-verified keys into the cache (e.g. loaded from storage)."""
        self._store(server_name, keys)

    def _select(
        self, server_name: str, key_ids: Iterable[str], valid_at_ts: int | None
    ) -> dict[str, FetchedKey]:
        known = self._known(server_name)
        out = {}
        for kid in key_ids:
            fetched = known.get(kid)
            if fetched is not None and (valid_at_ts is None or fetched.valid_at(valid_at_ts)):
                out[kid] = fetched
        return out

    # -- fetching ------------------------------------------------------------------------

    def _fetch(
        self, server_name: str, wanted: Mapping[str, int] | None = None
    ) -> defer.Deferred[None]:
        """One fetch per server at a time; concurrent callers share it.

        ``wanted`` maps key IDs to the time they must be valid until; notaries are
        asked for those (some notaries only fetch keys named in the query).
        """
        if wanted:
            want = self._wanted.setdefault(server_name, {})
            for kid, ts in list(wanted.items())[:MAX_WANTED_KEYS]:
                want[kid] = max(ts, want.get(kid, ts))
        waiter: defer.Deferred[None] = defer.Deferred()
        if server_name in self._inflight:
            self._inflight[server_name].append(waiter)
            return waiter
        self._inflight[server_name] = [waiter]

        def done(_: object) -> None:
            self._last_fetch.pop(server_name, None)
            while len(self._last_fetch) >= MAX_CACHED_SERVERS:
                del self._last_fetch[next(iter(self._last_fetch))]
            if len(self._last_error) >= MAX_CACHED_SERVERS:
                self._last_error.clear()
            self._last_fetch[server_name] = self._clock.seconds()
            for w in self._inflight.pop(server_name, []):
                if not w.called:  # a caller may have cancelled its wait
                    w.callback(None)

        d = defer.ensureDeferred(self._fetch_now(server_name))
        d.addBoth(done)
        return waiter

    async def _fetch_now(self, server_name: str) -> None:
        """Try the origin, then each notary; remember the last error. Never fails."""
        wanted = self._wanted.pop(server_name, {})
        errors: list[str] = []
        # A notary's own keys can only come from the notary itself.
        is_notary = any(n.server_name == server_name for n in self.notaries)
        if self.fetch_directly or is_notary:
            try:
                await self._fetch_direct(server_name)
                self._last_error.pop(server_name, None)
                return
            except MatrixError as e:
                errors.append(f"direct: {e.msg}")
            except Exception as e:  # defensive: a bug must not hang callers
                errors.append(f"direct: {type(e).__name__}")
        for notary in self.notaries:
            if notary.server_name == server_name:
                continue
            try:
                await self._fetch_via_notary(notary, server_name, wanted)
                self._last_error.pop(server_name, None)
                return
            except MatrixError as e:
                errors.append(f"via {notary.server_name}: {e.msg}")
            except Exception as e:
                errors.append(f"via {notary.server_name}: {type(e).__name__}")
        if errors:
            msg = "; ".join(errors)[:1000]
            self._last_error[server_name] = SignatureError(
                f"Could not fetch keys of {server_name}: {msg}"
            )

    async def _fetch_direct(self, server_name: str) -> None:
        response = await self._client.get_server_keys(server_name)
        now = self._now_ms()
        keys, valid_until = parse_key_response(server_name, response, now)
        self._store(server_name, keys)
        self._remember_raw(server_name, valid_until, response)
        await self._persist(server_name, keys, response)

    async def _load(self, server_name: str) -> None:
        """Read ``server_name``'s stored keys into memory (once per server)."""
        if len(self._loaded) >= MAX_CACHED_SERVERS:
            self._loaded.clear()
        self._loaded.add(server_name)
        if self._db is None:
            return
        try:
            stored = await self._db.get_server_keys(server_name)
            keys = {
                kid: FetchedKey(
                    kid,
                    decode_verify_key_base64(*split_key_id(kid), k.verify_key_b64),
                    k.valid_until_ts,
                    k.expired_ts,
                )
                for kid, k in stored.items()
                if kid.startswith("ed25519:")
            }
        except Exception as e:
            # A storage hiccup only costs a refetch.
            log.warn("Reading stored keys of {server} failed: {e!r}", server=server_name, e=e)
            return
        if keys:
            self._store(server_name, keys)

    async def _persist(
        self, server_name: str, keys: Mapping[str, FetchedKey], raw: Mapping[str, Any]
    ) -> None:
        if self._db is None:
            return
        from fedlib.storage.interface import ServerKey

        records = [
            ServerKey(
                server_name=server_name,
                key_id=kid,
                verify_key_b64=encode_verify_key_base64(f.verify_key),
                valid_until_ts=f.valid_until_ts,
                expired_ts=f.expired_ts,
            )
            for kid, f in keys.items()
        ]
        try:
            await self._db.store_server_keys(server_name, records, raw)
        except Exception as e:
            log.warn("Storing keys of {server} failed: {e!r}", server=server_name, e=e)

    def _remember_raw(self, server_name: str, valid_until: int, response: dict[str, Any]) -> None:
        previous = self._raw.get(server_name)
        if previous is None or previous[0] <= valid_until:
            self._raw.pop(server_name, None)
            while len(self._raw) >= MAX_CACHED_SERVERS:
                del self._raw[next(iter(self._raw))]
            self._raw[server_name] = (valid_until, response)

    async def _notary_keys(self, notary: Notary, key_ids: Iterable[str]) -> dict[str, Any]:
        if notary.verify_keys:
            return {k: v for k, v in notary.verify_keys.items() if k in set(key_ids)}
        wanted = list(key_ids)
        selected = self._select(notary.server_name, wanted, None)
        if len(selected) < len(wanted):
            await self._fetch(notary.server_name)
            selected = self._select(notary.server_name, wanted, None)
        return {k: f.verify_key for k, f in selected.items()}

    async def _fetch_via_notary(
        self, notary: Notary, server_name: str, wanted: Mapping[str, int]
    ) -> None:
        criteria = {kid: {"minimum_valid_until_ts": ts} for kid, ts in wanted.items()}
        entries = await self._client.query_keys_via_notary(
            notary.server_name, {server_name: criteria}
        )
        now = self._now_ms()
        found = False
        problems: list[str] = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("server_name") != server_name:
                continue
            try:
                all_sigs = entry.get("signatures")
                sigs = all_sigs.get(notary.server_name) if isinstance(all_sigs, dict) else None
                if not isinstance(sigs, dict) or not sigs:
                    raise SignatureError(f"not signed by notary {notary.server_name}")
                notary_keys = await self._notary_keys(notary, list(sigs))
                if not notary_keys:
                    raise SignatureError(f"no known key of notary {notary.server_name}")
                last: SignatureError | None = None
                for key in notary_keys.values():
                    try:
                        verify_json(entry, notary.server_name, key)
                        last = None
                        break
                    except SignatureError as e:
                        last = e
                if last is not None:
                    raise last
                keys, valid_until = parse_key_response(server_name, entry, now)
            except SignatureError as e:
                problems.append(e.msg)
                continue
            self._store(server_name, keys)
            self._remember_raw(server_name, valid_until, entry)
            await self._persist(server_name, keys, entry)
            found = True
        if not found:
            why = "; ".join(problems) if problems else "no keys returned"
            raise SignatureError(f"notary {notary.server_name}: {why}"[:500])

    # -- IKeyring ------------------------------------------------------------------------

    async def _get_verify_keys(
        self, server_name: str, key_ids: Iterable[str], valid_at_ts: int | None
    ) -> dict[str, Any]:
        wanted = list(dict.fromkeys(key_ids))
        selected = self._select(server_name, wanted, valid_at_ts)
        is_local = self._local_name is not None and server_name == self._local_name
        if len(selected) < len(wanted) and not is_local and server_name not in self._loaded:
            await self._load(server_name)
            selected = self._select(server_name, wanted, valid_at_ts)
        if len(selected) < len(wanted) and not is_local:
            last = self._last_fetch.get(server_name)
            recently = last is not None and self._clock.seconds() - last < self._refetch_interval
            if not recently or server_name in self._inflight:
                when = valid_at_ts if valid_at_ts is not None else self._now_ms()
                await self._fetch(server_name, {k: when for k in wanted if k not in selected})
                selected = self._select(server_name, wanted, valid_at_ts)
            if not selected and server_name in self._last_error:
                raise self._last_error[server_name]
        return {kid: f.verify_key for kid, f in selected.items()}

    async def _refresh(self, server_name: str, key_ids: Iterable[str]) -> dict[str, FetchedKey]:
        self._last_error.pop(server_name, None)
        await self._fetch(server_name, {k: self._now_ms() for k in key_ids})
        known = dict(self._known(server_name))
        if not known and server_name in self._last_error:
            raise self._last_error[server_name]
        return known

    def refresh_keys(
        self, server_name: str, key_ids: Iterable[str] = ()
    ) -> defer.Deferred[dict[str, FetchedKey]]:
        """Fetch ``server_name``'s keys now (directly and/or via the notaries, as
        configured; notaries are asked for ``key_ids`` by name) and return every key
        known for it; fails with :class:`SignatureError` when none could be had."""
        return defer.ensureDeferred(self._refresh(server_name, key_ids))

    def get_verify_keys(
        self, server_name: str, key_ids: Iterable[str], valid_at_ts: int | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        return defer.ensureDeferred(self._get_verify_keys(server_name, key_ids, valid_at_ts))

    async def _verify_json(
        self, server_name: str, obj: Mapping[str, Any], valid_at_ts: int | None
    ) -> None:
        signatures = obj.get("signatures")
        sigs = signatures.get(server_name) if isinstance(signatures, dict) else None
        if not isinstance(sigs, dict) or not sigs:
            raise SignatureError(f"Not signed by {server_name}")
        key_ids = [kid for kid in sigs if isinstance(kid, str) and kid.startswith("ed25519:")]
        if not key_ids:
            raise SignatureError(f"No ed25519 signature of {server_name}")
        keys = await self._get_verify_keys(server_name, key_ids, valid_at_ts)
        if not keys:
            when = "" if valid_at_ts is None else f" valid at {valid_at_ts}"
            raise SignatureError(f"No known key{when} of {server_name} for {sorted(key_ids)}")
        last: SignatureError | None = None
        for key in keys.values():
            try:
                verify_json(obj, server_name, key)
                return
            except SignatureError as e:
                last = e
        assert last is not None
        raise last

    def verify_json_for_server(
        self, server_name: str, obj: Mapping[str, Any], valid_at_ts: int | None = None
    ) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._verify_json(server_name, obj, valid_at_ts))

    async def _verify_event(self, room_version: str, event: Mapping[str, Any]) -> None:
        version = get_room_version(room_version)
        signers = required_signers(version, event)
        valid_at: int | None = None
        if version.enforce_key_validity:
            ts = event.get("origin_server_ts")
            if not isinstance(ts, int) or isinstance(ts, bool):
                raise SignatureError("Event has no integer origin_server_ts")
            valid_at = ts
        signatures = event.get("signatures")
        if not isinstance(signatures, dict):
            raise SignatureError("Event has no signatures")
        servers = sorted(signers)
        lookups = []
        for server in servers:
            sigs = signatures.get(server)
            if not isinstance(sigs, dict) or not sigs:
                raise SignatureError(f"Event is not signed by {server}")
            kids = [k for k in sigs if isinstance(k, str)]
            lookups.append(defer.ensureDeferred(self._get_verify_keys(server, kids, valid_at)))
        try:
            found = await defer.gatherResults(lookups, consumeErrors=True)
        except defer.FirstError as e:
            failure = e.subFailure
            if isinstance(failure.value, MatrixError):
                raise failure.value from None
            raise SignatureError(f"Key lookup failed: {failure.value!r}"[:300]) from None
        verify_event_signatures(room_version, event, dict(zip(servers, found, strict=True)))

    def _verify_event_cached(self, room_version: str, event: Mapping[str, Any]) -> bool:
        """Verify with cached keys only; ``False`` when some key must be looked up."""
        version = get_room_version(room_version)
        valid_at: int | None = None
        if version.enforce_key_validity:
            ts = event.get("origin_server_ts")
            if not isinstance(ts, int) or isinstance(ts, bool):
                return False  # the full path reports the error
            valid_at = ts
        signatures = event.get("signatures")
        if not isinstance(signatures, dict):
            return False
        keys: dict[str, dict[str, Any]] = {}
        for server in required_signers(version, event):
            sigs = signatures.get(server)
            if not isinstance(sigs, dict) or not sigs:
                return False
            selected = self._select(server, [k for k in sigs if isinstance(k, str)], valid_at)
            if not selected:
                return False
            keys[server] = {kid: f.verify_key for kid, f in selected.items()}
        verify_event_signatures(room_version, event, keys)
        return True

    def verify_event(self, room_version: str, event: Mapping[str, Any]) -> defer.Deferred[None]:
        # Most events are signed with keys already cached: skip the Deferred machinery.
        try:
            if self._verify_event_cached(room_version, event):
                return defer.succeed(None)
        except MatrixError as e:
            return defer.fail(e)
        return defer.ensureDeferred(self._verify_event(room_version, event))

    # -- acting as a notary ------------------------------------------------------------------

    async def _notary_query(
        self,
        server_keys: Mapping[str, Mapping[str, Any]],
        notary_name: str,
        notary_signing_key: Any,
        own_response: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = self._now_ms()
        out: list[dict[str, Any]] = []
        for server_name, criteria in list(server_keys.items())[:MAX_NOTARY_SERVERS]:
            if own_response is not None and server_name == notary_name:
                out.append(dict(own_response))
                continue
            minimum = now
            wanted: dict[str, int] = {}
            if isinstance(criteria, dict):
                for kid, c in criteria.items():
                    m = c.get("minimum_valid_until_ts") if isinstance(c, dict) else None
                    if isinstance(m, int) and not isinstance(m, bool):
                        minimum = max(minimum, m)
                    if isinstance(kid, str):
                        wanted[kid] = m if isinstance(m, int) and not isinstance(m, bool) else now
            cached = self._raw.get(server_name)
            if cached is None and self._db is not None:
                cached = await self._stored_raw(server_name, now)
            if cached is None or cached[0] < minimum:
                last = self._last_fetch.get(server_name)
                if last is None or self._clock.seconds() - last >= self._refetch_interval:
                    await self._fetch(server_name, wanted)
                cached = self._raw.get(server_name)
            if cached is not None:
                out.append(sign_json(cached[1], notary_name, notary_signing_key))
        return {"server_keys": out}

    async def _stored_raw(self, server_name: str, now: int) -> tuple[int, dict[str, Any]] | None:
        try:
            stored = await self._db.get_server_keys_json(server_name)
        except Exception as e:
            log.warn("Reading stored key JSON of {server} failed: {e!r}", server=server_name, e=e)
            return None
        best: tuple[int, dict[str, Any]] | None = None
        for raw in stored:
            try:
                # Stored objects were verified when fetched; re-parse for their validity.
                _, valid_until = parse_key_response(server_name, dict(raw), now)
            except SignatureError:
                continue
            if best is None or valid_until > best[0]:
                best = (valid_until, dict(raw))
        if best is not None:
            self._remember_raw(server_name, *best)
        return best

    def notary_query(
        self,
        server_keys: Mapping[str, Mapping[str, Any]],
        notary_name: str,
        notary_signing_key: Any,
        own_response: Mapping[str, Any] | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        """The body for our ``POST /_matrix/key/v2/query`` (``server_keys`` is the
        request's ``server_keys``): each server's latest verified key object (fetched
        if missing or not valid until the requested minimum), cosigned by us.
        Servers whose keys cannot be had are left out, as the spec says.
        ``own_response`` answers for ``notary_name`` itself."""
        return defer.ensureDeferred(
            self._notary_query(server_keys, notary_name, notary_signing_key, own_response)
        )


#: Most key IDs named for one server in one notary query.
MAX_WANTED_KEYS = 20

#: Most servers answered in one notary query.
MAX_NOTARY_SERVERS = 100


def build_server_keys_response(
    server_name: str,
    signing_key: Any,
    valid_until_ts: int,
    old_keys: Mapping[str, tuple[Any, int]] | None = None,
    extra_signing_keys: Iterable[Any] = (),
) -> dict[str, Any]:
    """Our ``/_matrix/key/v2/server`` body, signed by every current key.

    ``old_keys`` maps key IDs to ``(verify_key, expired_ts)``; ``extra_signing_keys``
    are further current keys (during a rotation).
    """
    current = [signing_key, *extra_signing_keys]
    body: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {
            key_id(k): {"key": encode_verify_key_base64(get_verify_key(k))} for k in current
        },
        "old_verify_keys": {
            kid: {"key": encode_verify_key_base64(vk), "expired_ts": expired}
            for kid, (vk, expired) in (old_keys or {}).items()
        },
    }
    for k in current:
        body = sign_json(body, server_name, k)
    return body


def local_keys_from_signing_keys(
    signing_keys: Iterable[Any],
    old_keys: Mapping[str, tuple[Any, int]] | None = None,
) -> dict[str, FetchedKey]:
    """Our own keys as :class:`FetchedKey` records for ``Keyring(local_keys=...)``."""
    out = {
        key_id(k): FetchedKey(key_id(k), get_verify_key(k), valid_until_ts=2**62)
        for k in signing_keys
    }
    for kid, (vk, expired) in (old_keys or {}).items():
        out.setdefault(kid, FetchedKey(kid, vk, expired, expired_ts=expired))
    return out
