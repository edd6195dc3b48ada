-- Log compaction (cleanup.policy=compact): the offset below which a partition has been
-- compacted by key, Kafka's cleaner checkpoint. Records from here to the cleanable end are
-- the dirty part: the next pass keeps, of every key they hold, only the latest record,
-- across the whole log. It only moves forward, after a pass's swaps all landed.
ALTER TABLE partitions ADD COLUMN clean_offset BIGINT NOT NULL DEFAULT 0;
