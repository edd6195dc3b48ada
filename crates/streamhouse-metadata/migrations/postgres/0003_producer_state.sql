-- Idempotent producers: the ids InitProducerId hands out, and per partition what each
-- producer last appended. Partition rows are written by the same commit as the data, so a
-- retried batch is recognized after a restart or a lease move.

-- The next producer id to hand out (one row, locked by each allocation). Ids are never
-- reused, even once rows of the producers table are expired.
CREATE TABLE producer_id_sequence (
    singleton        INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    next_producer_id BIGINT  NOT NULL
);

INSERT INTO producer_id_sequence (singleton, next_producer_id) VALUES (0, 0);

-- Every producer id handed out, with its latest epoch (InitProducerId bumps it).
CREATE TABLE producers (
    producer_id    BIGINT   NOT NULL PRIMARY KEY,
    producer_epoch SMALLINT NOT NULL,
    created_at_ms  BIGINT   NOT NULL,
    updated_at_ms  BIGINT   NOT NULL
);

-- What one partition knows about one producer: its epoch and last sequence there.
CREATE TABLE producer_states (
    topic          TEXT     NOT NULL,
    partition_id   INTEGER  NOT NULL,
    producer_id    BIGINT   NOT NULL,
    producer_epoch SMALLINT NOT NULL,
    last_sequence  INTEGER  NOT NULL,
    updated_at_ms  BIGINT   NOT NULL,
    PRIMARY KEY (topic, partition_id, producer_id),
    FOREIGN KEY (topic, partition_id) REFERENCES partitions (topic, partition_id) ON DELETE CASCADE
);

-- The producer's latest (up to 5) batches on the partition, to answer retries with their
-- original offsets.
CREATE TABLE producer_batches (
    topic          TEXT    NOT NULL,
    partition_id   INTEGER NOT NULL,
    producer_id    BIGINT  NOT NULL,
    base_offset    BIGINT  NOT NULL,
    first_sequence INTEGER NOT NULL,
    last_sequence  INTEGER NOT NULL,
    PRIMARY KEY (topic, partition_id, producer_id, base_offset),
    FOREIGN KEY (topic, partition_id, producer_id)
        REFERENCES producer_states (topic, partition_id, producer_id) ON DELETE CASCADE
);
