-- The lease epoch each index entry was committed under, for OffsetForLeaderEpoch: the end
-- offset of epoch E is the first offset committed under a later epoch. Entries written
-- before this column existed report -1 (unknown).
ALTER TABLE index_entries ADD COLUMN leader_epoch BIGINT NOT NULL DEFAULT -1;
