-- The analytics store: time bins, events and line crossings computed from detections, plus
-- what makes delivery exactly-once across restarts (producer high-water marks, engine state).
-- Analytics is the only writer; the query service reads these tables.

-- One row per (camera, scope, class, direction, bin): full cumulative values, overwritten
-- by every newer version of the bin (never incremented, so re-writing is harmless).
CREATE TABLE analytics_bins (
    camera_id          text             NOT NULL,
    scope              text             NOT NULL,
    scope_id           text             NOT NULL,
    object_class       smallint         NOT NULL,
    direction          smallint         NOT NULL,
    bin_start          timestamptz      NOT NULL,
    bin_seconds        integer          NOT NULL,
    final              boolean          NOT NULL,
    volume             integer          NOT NULL,
    speed_count        integer          NOT NULL,
    speed_sum_kmh      double precision NOT NULL,
    speed_sq_sum_kmh2  double precision NOT NULL,
    -- 1 km/h buckets 0..200 plus overflow (SPEED_BINS): percentiles of any merged range.
    speed_hist         integer[]        NOT NULL,
    headway_count      integer          NOT NULL,
    headway_sum_s      double precision NOT NULL,
    gap_count          integer          NOT NULL,
    gap_sum_s          double precision NOT NULL,
    frames             integer          NOT NULL,
    occupied_frames    integer          NOT NULL,
    object_frames      integer          NOT NULL,
    density_frames     integer          NOT NULL,
    density_sum_per_km double precision NOT NULL,
    travel_distance_m  double precision NOT NULL,
    travel_time_s      double precision NOT NULL,
    queue_frames       integer          NOT NULL,
    queue_sum_m        double precision NOT NULL,
    queue_max_m        double precision NOT NULL,
    dwell_count        integer          NOT NULL,
    dwell_sum_s        double precision NOT NULL,
    dwell_max_s        double precision NOT NULL,
    update_time        timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (camera_id, bin_seconds, bin_start, scope, scope_id, object_class, direction)
);
-- Retention deletes by age across cameras.
CREATE INDEX analytics_bins_bin_start_idx ON analytics_bins (bin_start);

-- Incidents, upserted by their deterministic id as they open, update and close.
CREATE TABLE analytics_events (
    event_id      text             PRIMARY KEY,
    camera_id     text             NOT NULL,
    type          smallint         NOT NULL,
    severity      smallint         NOT NULL,
    start_time    timestamptz      NOT NULL,
    end_time      timestamptz,
    track_id      bigint,
    object_class  smallint         NOT NULL,
    lane_id       text             NOT NULL,
    zone_id       text             NOT NULL,
    evidence      jsonb,
    description   text             NOT NULL,
    details       jsonb            NOT NULL,
    update_time   timestamptz      NOT NULL
);
CREATE INDEX analytics_events_camera_start_idx ON analytics_events (camera_id, start_time);
CREATE INDEX analytics_events_update_time_idx ON analytics_events (update_time);

-- Per-vehicle crossings behind the line counts. Keyed, so a replayed write adds nothing.
CREATE TABLE analytics_crossings (
    camera_id     text             NOT NULL,
    line_id       text             NOT NULL,
    track_id      bigint           NOT NULL,
    crossing_time timestamptz      NOT NULL,
    object_class  smallint         NOT NULL,
    direction     smallint         NOT NULL,
    speed_kmh     double precision,
    lane_id       text             NOT NULL,
    PRIMARY KEY (camera_id, line_id, track_id, crossing_time)
);
CREATE INDEX analytics_crossings_time_idx ON analytics_crossings (crossing_time);

-- De-duplication: the highest batch sequence applied per producer incarnation. Written in
-- the same transaction as the batch, so "applied" and "marked" can never disagree.
CREATE TABLE analytics_producers (
    producer_id   text        PRIMARY KEY,
    last_sequence bigint      NOT NULL,
    update_time   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analytics_producers_update_time_idx ON analytics_producers (update_time);

-- Each camera's engine state (tracks, open bins and events) as of its last applied batch:
-- a restart resumes from it, and the producer resends what came after.
CREATE TABLE analytics_camera_state (
    camera_id   text        PRIMARY KEY,
    state       bytea       NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now()
);
