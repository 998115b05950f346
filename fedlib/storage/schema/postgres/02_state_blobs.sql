-- Version 2: a state group's entries become one JSON object per group,
-- {"type": {"state_key": "event_id" or null}}, instead of one row per entry.
-- Reading a 10,000-member snapshot is then one row and one json.loads instead of
-- 10,000 rows; deltas shrink the same way.
ALTER TABLE state_groups ADD COLUMN entries TEXT NOT NULL DEFAULT '{}';

UPDATE state_groups SET entries = COALESCE((
    SELECT json_object_agg(t.type, t.m)::text FROM (
        SELECT type, json_object_agg(state_key, event_id) AS m
        FROM state_group_entries WHERE group_id = state_groups.id GROUP BY type
    ) AS t
), '{}');

DROP TABLE state_group_entries;
