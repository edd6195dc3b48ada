-- Consumer group offsets: what each group has committed per partition. They outlive the
-- group's members (and restarts); a group with committed offsets but no members is "Empty".
CREATE TABLE group_offsets (
    group_id            TEXT    NOT NULL,
    topic               TEXT    NOT NULL,
    partition_id        INTEGER NOT NULL,
    committed_offset    BIGINT  NOT NULL,
    leader_epoch        INTEGER NOT NULL,
    metadata            TEXT,
    commit_timestamp_ms BIGINT  NOT NULL,
    PRIMARY KEY (group_id, topic, partition_id)
);
