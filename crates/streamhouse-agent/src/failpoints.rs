//! Crash points for the crash tests, through the `fail` crate: with the environment variable
//! `FAILPOINTS=<name>=return` (several separated by `;`), the process dies on the spot when
//! it reaches `<name>`, as kill -9 would (no destructor, flush or release runs). Without
//! the variable every point is a lookup that finds nothing.
//!
//! The points (each between two steps whose order the crash-safety argument relies on):
//! `compaction-before-put`, `compaction-after-put`, `compaction-after-swap` (object and log
//! compaction alike), `log-compaction-before-checkpoint` (a log compaction pass swapped its
//! runs in, its checkpoint did not move yet),
//! `gc-after-delete` (objects deleted, not yet forgotten), `gc-after-orphan-claim`
//! (tombstones recorded, orphans not yet deleted).

/// Reads `FAILPOINTS` from the environment; call once at start. Keep the result alive for
/// as long as the points should be armed.
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// Kills the process here if the point `name` is armed.
pub(crate) fn crash_point(name: &'static str) {
    fail::fail_point!(name, |_| {
        eprintln!("failpoint {name}: killing the process");
        std::process::abort()
    });
}
