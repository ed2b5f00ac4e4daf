-- API keys (AdminService.CreateApiKey/ListApiKeys/DeleteApiKey), verified by every service
-- with a database. Only the SHA-256 of a secret is stored; key_prefix (its first 12
-- characters) finds the candidate rows. A deleted key is a deleted row: nothing to filter.
CREATE TABLE api_keys (
    id              text        PRIMARY KEY,
    display_name    text        NOT NULL DEFAULT '',
    -- its.admin.v1.Role's number (VIEWER 1, OPERATOR 2, ADMIN 3, SERVICE 4).
    role            smallint    NOT NULL CHECK (role BETWEEN 1 AND 4),
    -- "cameras/{camera}" names; empty: every camera (always empty for ADMIN).
    allowed_cameras text[]      NOT NULL DEFAULT '{}',
    expire_time     timestamptz,
    key_prefix      text        NOT NULL,
    secret_hash     bytea       NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    create_time     timestamptz NOT NULL DEFAULT now(),
    creator         text        NOT NULL,
    last_use_time   timestamptz,
    CHECK (role <> 3 OR cardinality(allowed_cameras) = 0)
);
CREATE INDEX api_keys_key_prefix_idx ON api_keys (key_prefix);
-- ListApiKeys' order: newest first, ties by id.
CREATE INDEX api_keys_create_time_idx ON api_keys (create_time DESC, id);

-- Feature flags switched through AdminService. A flag has a row only once somebody set it
-- (no row: the release's default); revision counts the updates and is the etag.
CREATE TABLE feature_flags (
    name        text        PRIMARY KEY,
    enabled     boolean     NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now(),
    updater     text        NOT NULL,
    revision    bigint      NOT NULL CHECK (revision > 0)
);

-- ListAuditLogEntries pages by (event_time, id) in either direction.
CREATE INDEX audit_log_event_time_id_idx ON audit_log (event_time, id);
