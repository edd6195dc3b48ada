-- Garbage collection and compaction.
--
-- objects.state: 'live' for an object a commit (or a compaction swap) named; 'orphan' for a
-- key garbage collection found in the object store that no commit ever named. An orphan's
-- row is a tombstone and stays: a late commit naming that key (an agent paused between its
-- PUT and its commit) then conflicts on the primary key and is refused, so no index entry
-- can ever name an object that garbage collection deleted.
--
-- objects.unreferenced_since_ms: when garbage collection first saw no index entry naming a
-- live object (store clock). Nothing can name it again, so it is deleted from the object
-- store once a grace period that covers in-flight reads has passed, then forgotten.
ALTER TABLE objects ADD COLUMN state TEXT NOT NULL DEFAULT 'live';
ALTER TABLE objects ADD COLUMN unreferenced_since_ms BIGINT;
CREATE INDEX objects_by_unreferenced_since ON objects (unreferenced_since_ms);

-- Cluster-wide maintenance jobs (garbage collection): one holder at a time, claimed like a
-- lease, so that one agent runs each job while several share the store.
CREATE TABLE maintenance_jobs (
    job           TEXT   NOT NULL PRIMARY KEY,
    holder        TEXT   NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- Index entries below their partition's log start hold no readable record; moving the log
-- start now deletes them in the same transaction. Drop the ones left from before.
DELETE FROM index_entries WHERE end_offset <= (
    SELECT p.log_start_offset FROM partitions p
    WHERE p.topic = index_entries.topic AND p.partition_id = index_entries.partition_id
);
