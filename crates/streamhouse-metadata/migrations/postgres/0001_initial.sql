-- Topics, partitions, the offset index, objects, agents and leases (PostgreSQL).
-- The same tables as migrations/sqlite; times are milliseconds since the Unix epoch on the
-- database's clock.

CREATE TABLE topics (
    name          TEXT    NOT NULL PRIMARY KEY,
    topic_id      UUID    NOT NULL UNIQUE,
    partitions    INTEGER NOT NULL,
    created_at_ms BIGINT  NOT NULL
);

CREATE TABLE topic_configs (
    topic TEXT NOT NULL REFERENCES topics (name) ON DELETE CASCADE,
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (topic, name)
);

-- A commit locks its partitions' rows (SELECT … FOR UPDATE) before it checks and moves the
-- high watermark, so commits to one partition run one after the other.
CREATE TABLE partitions (
    topic            TEXT    NOT NULL REFERENCES topics (name) ON DELETE CASCADE,
    partition_id     INTEGER NOT NULL,
    high_watermark   BIGINT  NOT NULL,
    log_start_offset BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition_id)
);

-- Which object holds which offset range of which partition. end_offset is exclusive.
CREATE TABLE index_entries (
    topic         TEXT    NOT NULL,
    partition_id  INTEGER NOT NULL,
    base_offset   BIGINT  NOT NULL,
    end_offset    BIGINT  NOT NULL,
    object_key    TEXT    NOT NULL,
    byte_start    BIGINT  NOT NULL,
    byte_len      BIGINT  NOT NULL,
    max_timestamp BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition_id, base_offset),
    FOREIGN KEY (topic, partition_id) REFERENCES partitions (topic, partition_id) ON DELETE CASCADE
);

CREATE INDEX index_entries_by_end ON index_entries (topic, partition_id, end_offset);
CREATE INDEX index_entries_by_object ON index_entries (object_key);

-- Every object a commit named. Objects not listed here were never committed.
CREATE TABLE objects (
    object_key    TEXT   NOT NULL PRIMARY KEY,
    size_bytes    BIGINT NOT NULL,
    writer        TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE agents (
    agent_id          TEXT    NOT NULL PRIMARY KEY,
    node_id           INTEGER NOT NULL UNIQUE,
    advertised_addr   TEXT    NOT NULL,
    agent_group       TEXT    NOT NULL,
    last_heartbeat_ms BIGINT  NOT NULL
);

-- One row per partition that has ever been leased; the epoch survives release so that the
-- next holder gets a larger one. Rows outlive their topic on purpose: a topic deleted and
-- created again continues the epochs, so a leader of the old topic is still fenced.
CREATE TABLE leases (
    topic         TEXT    NOT NULL,
    partition_id  INTEGER NOT NULL,
    holder        TEXT,
    epoch         BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition_id)
);
