-- Security events (authentication failures, admin changes, key use) with fixed fields,
-- written by every service and read through AdminService.ListAuditLogEntries.
CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_time     timestamptz NOT NULL DEFAULT now(),
    service        text        NOT NULL,
    actor          text        NOT NULL,
    action         text        NOT NULL,
    resource       text        NOT NULL DEFAULT '',
    outcome        text        NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    client_address text        NOT NULL DEFAULT '',
    trace_id       text        NOT NULL DEFAULT '',
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_event_time_idx ON audit_log (event_time DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, event_time DESC);
