-- fedlib storage schema, version 1 (SQLite).
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    partial_state INTEGER NOT NULL DEFAULT 0,
    -- State group of the room's current state (NULL until the first state).
    current_group INTEGER
);

-- A state group is a full snapshot (parent IS NULL) or a delta against parent.
-- depth counts logical steps since the last snapshot; parent is the ancestor at
-- depth - lowbit(depth), so reading a group touches O(log depth) deltas.
CREATE TABLE state_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    parent INTEGER REFERENCES state_groups(id),
    depth INTEGER NOT NULL,
    root_size INTEGER NOT NULL
);

-- event_id NULL deletes the key relative to the parent.
CREATE TABLE state_group_entries (
    group_id INTEGER NOT NULL REFERENCES state_groups(id),
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT,
    PRIMARY KEY (group_id, type, state_key)
) WITHOUT ROWID;

CREATE TABLE events (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES rooms(room_id),
    stream_ordering INTEGER NOT NULL UNIQUE,
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    status TEXT NOT NULL,
    rejection_reason TEXT,
    membership TEXT,
    state_before_group INTEGER REFERENCES state_groups(id),
    state_after_group INTEGER REFERENCES state_groups(id),
    json TEXT NOT NULL
);
CREATE INDEX events_room_depth ON events (room_id, depth);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts, stream_ordering);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_id)
) WITHOUT ROWID;
CREATE INDEX event_edges_prev ON event_edges (prev_id);

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_id)
) WITHOUT ROWID;

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
) WITHOUT ROWID;

CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
) WITHOUT ROWID;

CREATE TABLE stripped_rooms (
    kind TEXT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    room_version TEXT NOT NULL,
    event_json TEXT NOT NULL,
    stripped_json TEXT NOT NULL,
    PRIMARY KEY (kind, room_id, user_id)
);

CREATE TABLE received_transactions (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    claimer TEXT,
    claim_ts INTEGER NOT NULL,
    response_json TEXT,
    PRIMARY KEY (origin, txn_id)
);

CREATE TABLE destinations (
    destination TEXT PRIMARY KEY,
    lease_claimer TEXT,
    lease_expires_ts INTEGER,
    last_successful_stream INTEGER,
    failure_ts INTEGER,
    retry_interval_ms INTEGER
);

CREATE TABLE pdu_queue (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    event_id TEXT NOT NULL REFERENCES events(event_id),
    room_id TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    UNIQUE (destination, event_id)
);
CREATE INDEX pdu_queue_dest ON pdu_queue (destination, stream_ordering);

CREATE TABLE edu_queue (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX edu_queue_dest ON edu_queue (destination, position);

CREATE TABLE own_keys (
    key_id TEXT PRIMARY KEY,
    verify_key TEXT NOT NULL,
    secret_seed TEXT,
    expired_ts INTEGER
);

CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    expired_ts INTEGER,
    json TEXT,
    PRIMARY KEY (server_name, key_id)
);
