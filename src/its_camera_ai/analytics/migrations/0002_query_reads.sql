-- What the query service reads by (read-only; analytics stays the only writer).
--
-- Event changes are numbered in commit order: every insert or update of an event row takes
-- the next analytics_event_changes value (change_seq; first_seq keeps the one it was created
-- with), and analytics takes a transaction-level advisory lock before writing events, so a
-- transaction can only draw numbers once every earlier one has committed. StreamEvents then
-- follows change_seq and never sees a smaller number commit after a larger one (no horizon
-- to compute, and no other database's transactions to wait for).
--
-- first_xid: a ListEvents page token keeps the snapshot of its first page, and later pages
-- show only events that snapshot saw, so events inserted while a client pages neither shift
-- nor duplicate rows.
CREATE SEQUENCE analytics_event_changes;
ALTER TABLE analytics_events
    ADD COLUMN first_xid  xid8   NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN change_seq bigint NOT NULL DEFAULT nextval('analytics_event_changes'),
    ADD COLUMN first_seq  bigint;
UPDATE analytics_events SET first_seq = change_seq;
ALTER TABLE analytics_events ALTER COLUMN first_seq SET NOT NULL;
CREATE UNIQUE INDEX analytics_events_change_seq_idx ON analytics_events (change_seq);

CREATE FUNCTION analytics_events_first_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.first_seq := NEW.change_seq;
    RETURN NEW;
END
$$;
CREATE TRIGGER analytics_events_first_seq BEFORE INSERT ON analytics_events
    FOR EACH ROW EXECUTE FUNCTION analytics_events_first_seq();

-- ListEvents orders by start_time (default), end_time, severity or update_time, ties broken
-- by name (camera, then event id), for one camera or all of them.
DROP INDEX analytics_events_camera_start_idx;
CREATE INDEX analytics_events_camera_start_idx ON analytics_events (camera_id, start_time, event_id);
CREATE INDEX analytics_events_start_idx ON analytics_events (start_time, camera_id, event_id);

-- Counts by lane, or by direction without a line, come from the crossings of a time range.
CREATE INDEX analytics_crossings_camera_time_idx ON analytics_crossings (camera_id, crossing_time);

-- ListEvents' other orders over every camera (one camera's pages use them too, skipping the
-- other cameras' entries inside the index). Ties are broken by name ascending, so a
-- descending order reads an index backwards and sorts each run of equal keys by name: short
-- runs for times, but four long ones for severity, which gets an index per direction. An
-- ongoing event (no end_time) sorts after every ended one: the expression is the one
-- ListEvents orders by. update_time orders by analytics_events_update_time_idx.
CREATE INDEX analytics_events_end_idx
    ON analytics_events ((coalesce(end_time, 'infinity'::timestamptz)), camera_id, event_id);
CREATE INDEX analytics_events_severity_idx ON analytics_events (severity, camera_id, event_id);
CREATE INDEX analytics_events_severity_desc_idx
    ON analytics_events (severity DESC, camera_id, event_id);

-- Counts by direction without a line take each vehicle once, at its first crossing that
-- matches the filters: whether a track crossed earlier is looked up by the track.
CREATE INDEX analytics_crossings_camera_track_idx
    ON analytics_crossings (camera_id, track_id, crossing_time);
