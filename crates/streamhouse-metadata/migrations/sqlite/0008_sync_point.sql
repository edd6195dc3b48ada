-- One row that a synced commit changes when the store needs every commit before it to be
-- durable: compaction swaps commit without waiting for the WAL's fsync, and the objects they
-- unnamed are deleted only after such a commit (SqliteStore::lazy, sync_point).
CREATE TABLE sync_point (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    syncs     BIGINT  NOT NULL
);
INSERT INTO sync_point (singleton, syncs) VALUES (0, 0);
