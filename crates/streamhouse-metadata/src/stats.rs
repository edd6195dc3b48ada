//! The metadata store's metrics (SQLite): how long writers wait for and hold the store's
//! turn to write, and how long the background WAL checkpoints take. A flush's commit that
//! is slow because a compaction swap, garbage collection or a checkpoint held the turn
//! shows here as a wait, one slow because of its own fsync as a long hold.

use std::time::Duration;

use metrics::{describe_histogram, histogram, Unit};

const TURN_WAIT: &str = "streamhouse_metadata_write_turn_wait_seconds";
const TURN_HELD: &str = "streamhouse_metadata_write_turn_held_seconds";
const CHECKPOINT: &str = "streamhouse_metadata_checkpoint_duration_seconds";

/// A writer waited `waited` for its turn (`writer`: commit, normal, background, checkpoint).
pub(crate) fn turn_waited(writer: &'static str, waited: Duration) {
    histogram!(TURN_WAIT, "writer" => writer).record(waited.as_secs_f64());
}

/// A writer held its turn for `held`.
pub(crate) fn turn_held(writer: &'static str, held: Duration) {
    histogram!(TURN_HELD, "writer" => writer).record(held.as_secs_f64());
}

/// A WAL checkpoint (`mode`: passive or restart) took `elapsed`.
pub(crate) fn checkpoint_done(mode: &'static str, elapsed: Duration) {
    histogram!(CHECKPOINT, "mode" => mode).record(elapsed.as_secs_f64());
}

/// Gives the metadata store's metrics their help text and units. Call once at start, after
/// the `metrics` recorder is installed.
pub fn describe_metrics() {
    describe_histogram!(
        TURN_WAIT,
        Unit::Seconds,
        "Time a write to the SQLite metadata store waited for its turn: writer=commit (a flush's commit), normal, background (compaction swaps, garbage collection) or checkpoint (a WAL restart)."
    );
    describe_histogram!(
        TURN_HELD,
        Unit::Seconds,
        "Time a write to the SQLite metadata store held its turn (other writers wait meanwhile), by writer as for the wait."
    );
    describe_histogram!(
        CHECKPOINT,
        Unit::Seconds,
        "Duration of each background WAL checkpoint of the SQLite metadata store: mode=passive (copies the log back, holds up no writer) or restart (holds the turn to write)."
    );
}
