-- Version 3: events that some accepted event lists in prev_events. Deciding whether a
-- new event is a forward extremity is then a primary-key lookup instead of a join of
-- event_edges with events (which PostgreSQL plans badly while tables grow fast).
CREATE TABLE event_referenced (
    event_id TEXT PRIMARY KEY
);

INSERT INTO event_referenced (event_id)
SELECT DISTINCT ed.prev_id FROM event_edges ed JOIN events e ON e.event_id = ed.event_id
WHERE e.status = 'accepted';
