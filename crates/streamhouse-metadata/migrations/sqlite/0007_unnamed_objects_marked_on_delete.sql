-- An object becomes unnamed when the last index entry naming it is deleted (a compaction
-- swap, retention, topic deletion; nothing ever names it again). Garbage collection used to
-- find such objects by checking every live object against the index, every pass, holding
-- SQLite's only writer lock (which every flush's commit waits for) for a time that grew with
-- the number of objects. The deletion itself marks the object now, at the cost of one index
-- lookup per deleted entry. (Foreign-key cascades fire the trigger too.)
CREATE TRIGGER index_entries_mark_unnamed AFTER DELETE ON index_entries
FOR EACH ROW WHEN NOT EXISTS (SELECT 1 FROM index_entries WHERE object_key = OLD.object_key)
BEGIN
    UPDATE objects
    SET unreferenced_since_ms = CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)
    WHERE object_key = OLD.object_key AND state = 'live' AND unreferenced_since_ms IS NULL;
END;

-- The objects left unnamed and not yet marked before this migration.
UPDATE objects
SET unreferenced_since_ms = CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)
WHERE state = 'live' AND unreferenced_since_ms IS NULL
  AND NOT EXISTS (SELECT 1 FROM index_entries e WHERE e.object_key = objects.object_key);
