-- A revision on each camera's engine state, so analytics instances sharing this database
-- never continue a camera from an engine older than the stored state (a stream that went
-- A -> B -> A: A's engine, kept in memory, would overwrite B's cumulative bins).
--
-- A batch writes the state only if the stored revision is still the one its engine was
-- loaded at (or wrote last), and adds one; on a mismatch nothing of the batch is written and
-- the instance reloads the stored state and applies the batch again. 0 is a camera without a
-- row, and every row written before this migration.
--
-- state becomes nullable: a reset keeps the row with no state and the next revision, so a
-- revision is never seen twice (deleting the row would let an engine loaded before it had
-- any take "no row" for the camera it started from).
ALTER TABLE analytics_camera_state
    ADD COLUMN revision bigint NOT NULL DEFAULT 0,
    ALTER COLUMN state DROP NOT NULL;
