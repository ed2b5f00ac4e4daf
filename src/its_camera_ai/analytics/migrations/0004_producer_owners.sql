-- Producer identity: a producer id belongs to the authenticated principal that first
-- streamed under it; another principal using it is refused (no impersonation: a client
-- cannot feed batches in another producer's name, or replay its sequence numbers).
CREATE TABLE analytics_producer_owners (
    producer_id text        PRIMARY KEY,
    actor       text        NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);
