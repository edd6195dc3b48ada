//! The embedded metadata backend: SQLite through `sqlx`, with versioned migrations.
//!
//! Write transactions start with `BEGIN IMMEDIATE` so that a transaction that reads before it
//! writes takes the write lock up front instead of failing on upgrade. The database runs in
//! WAL mode with `synchronous = FULL`: a commit that returned is on disk. The one exception,
//! the compaction swap, is described at [`SqliteStore::lazy`].

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::error::MetadataError;
use crate::types::*;
use crate::{MetadataStore, Result};

/// Milliseconds since the Unix epoch on the database's clock.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A write transaction that holds the store's turn to write until it ends.
///
/// SQLite has one writer at a time, and a connection that finds the lock taken sleeps in
/// its busy handler, for 1, 2, 5, 10, 15… ms, rechecking in between: it never learns that
/// the lock came free, and whoever asks at the right moment goes first. A flush's commit
/// that arrived during a compaction swap of 10 ms waited 18 ms or more (the longest flush
/// commits during compaction passes went from 20-26 ms to 10-18 ms with turns). The
/// store's writers therefore take turns, first come first served, on an async mutex before
/// they ask SQLite, and each starts the moment the one before it ends. (Another process on
/// the same file still meets the busy handler; embedded mode has one.)
///
/// Flush commits, which producers wait for, also go before background writes (compaction
/// swaps, garbage collection): see [`Turns`].
struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: Turn,
}

impl WriteTx {
    async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &sqlx::SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }
}

/// Who writes next (see [`WriteTx`]): first come, first served, except that a background
/// write does not join the queue while a flush commit is waiting in it (for at most
/// [`BACKGROUND_YIELD`]), so a flush commit waits for at most one background write, the one
/// already running, unless commits kept one waiting that long. At 10 MiB/s of produce with compaction swapping runs every few
/// milliseconds, flush commits otherwise often found a swap queued before them.
#[derive(Debug, Default)]
struct Turns {
    /// Held for the length of a write.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Flush commits waiting for their turn.
    commits_waiting: AtomicUsize,
    /// Notified when the last waiting flush commit got its turn.
    commits_served: tokio::sync::Notify,
}

/// Longest a background write lets flush commits go first: under a steady stream of
/// commits it then queues anyway, so compaction still progresses.
const BACKGROUND_YIELD: Duration = Duration::from_millis(20);

/// Counts a flush commit as waiting for as long as it lives (also if its caller gives up).
struct CommitWaiting<'a>(&'a Turns);

impl Drop for CommitWaiting<'_> {
    fn drop(&mut self) {
        if self.0.commits_waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.commits_served.notify_waiters();
        }
    }
}

/// Which writes go first (see [`Turns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// A flush's commit: producers wait for it.
    Commit,
    Normal,
    /// Compaction swaps and garbage collection: nobody waits for them.
    Background,
    /// A WAL restart (see [`checkpoint_in_background`]): in line like a normal write, and
    /// timed under its own name.
    Checkpoint,
}

impl Priority {
    fn label(self) -> &'static str {
        match self {
            Priority::Commit => "commit",
            Priority::Normal => "normal",
            Priority::Background => "background",
            Priority::Checkpoint => "checkpoint",
        }
    }
}

/// A turn to write, held until dropped; how long it was waited for and held goes to the
/// `streamhouse_metadata_write_turn_*` histograms.
struct Turn {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    priority: Priority,
    taken: Instant,
}

impl Drop for Turn {
    fn drop(&mut self) {
        crate::stats::turn_held(self.priority.label(), self.taken.elapsed());
    }
}

impl Turns {
    /// Waits for a turn to write.
    async fn take(&self, priority: Priority) -> Turn {
        let asked = Instant::now();
        let guard = self.lock_for(priority).await;
        crate::stats::turn_waited(priority.label(), asked.elapsed());
        Turn {
            _guard: guard,
            priority,
            taken: Instant::now(),
        }
    }

    async fn lock_for(&self, priority: Priority) -> tokio::sync::OwnedMutexGuard<()> {
        match priority {
            Priority::Commit => {
                self.commits_waiting.fetch_add(1, Ordering::AcqRel);
                let _waiting = CommitWaiting(self);
                self.lock.clone().lock_owned().await
            }
            Priority::Normal | Priority::Checkpoint => self.lock.clone().lock_owned().await,
            Priority::Background => {
                let served = async {
                    loop {
                        let notified = self.commits_served.notified();
                        tokio::pin!(notified);
                        // Registered before the count is read, so a wake-up cannot slip
                        // between the two.
                        notified.as_mut().enable();
                        if self.commits_waiting.load(Ordering::Acquire) == 0 {
                            return;
                        }
                        notified.await;
                    }
                };
                let _ = tokio::time::timeout(BACKGROUND_YIELD, served).await;
                self.lock.clone().lock_owned().await
            }
        }
    }
}

/// Metadata kept in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Whose turn it is to write: see [`WriteTx`].
    turns: Arc<Turns>,
    /// Keeps the background checkpoint task going; it stops once the store is dropped.
    _checkpoints: Arc<()>,
    /// One connection with `synchronous = NORMAL`, for compaction swaps only: their commit
    /// does not wait for the WAL's fsync. A swap moves no offset or watermark and takes away
    /// no record a reader is owed (object compaction copies the bytes as they were, log
    /// compaction drops only records a later one of the same key supersedes, or expired
    /// tombstones), so losing it loses nothing: it survives a crash of the process (the WAL
    /// is written before the commit returns) and is made durable by the next synced commit
    /// (the WAL is appended in order, and its fsync covers every frame before). A power loss
    /// before that undoes it, and its object becomes an orphan for garbage collection. The
    /// one thing that must not happen first is deleting the objects the swap unnamed:
    /// [`MetadataStore::unreferenced_objects`] makes what it hands out durable before it
    /// returns. A swap's fsync held SQLite's writer lock, which flush commits wait for, about
    /// 0.2 ms longer and took the disk from theirs: at 10 MiB/s of produce on 2 cores, with
    /// swaps of 15 entries, syncing them raised the produce p99 by 26% over no compaction
    /// (one run), not syncing them by 16% (two runs).
    lazy: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://path` URL and migrates it.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(MetadataError::db("parse the SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // No checkpoint inside a commit: see `checkpoint_in_background`.
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await
            .map_err(MetadataError::db("open the SQLite database"))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(MetadataError::Migration)?;
        // Opened here and kept for good: a connection runs on a thread of its own, which takes
        // the priority of the thread that opened it, and swaps (holding the writer lock that
        // flush commits wait for) must not run on the background jobs' lower priority.
        let lazy = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone().synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(MetadataError::db("open the SQLite database"))?;
        let turns = Arc::new(Turns::default());
        let checkpoints = checkpoint_in_background(&pool, options, turns.clone());
        Ok(SqliteStore {
            pool,
            turns,
            _checkpoints: checkpoints,
            lazy,
        })
    }

    /// Starts a write transaction, in turn (see [`WriteTx`]). `BEGIN IMMEDIATE` takes
    /// SQLite's write lock at once, so a transaction that reads before it writes cannot fail
    /// on upgrading its lock.
    async fn write_tx(&self, context: &'static str) -> Result<WriteTx> {
        self.write_tx_as(Priority::Normal, context).await
    }

    /// [`SqliteStore::write_tx`] for a write of the given priority (see [`Turns`]).
    async fn write_tx_as(&self, priority: Priority, context: &'static str) -> Result<WriteTx> {
        self.write_tx_on(&self.pool, priority, context).await
    }

    /// [`SqliteStore::write_tx_as`] on a connection of `pool`.
    async fn write_tx_on(
        &self,
        pool: &SqlitePool,
        priority: Priority,
        context: &'static str,
    ) -> Result<WriteTx> {
        let turn = self.turns.take(priority).await;
        let tx = crate::begin_detached(pool, "BEGIN IMMEDIATE")
            .await
            .map_err(MetadataError::db(context))?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Makes every commit so far durable, the unsynced swaps' too (see [`SqliteStore::lazy`]):
    /// a synced commit of one changed row. SQLite has no other way to ask for the WAL's
    /// fsync (a checkpoint syncs it only when it has frames it may copy).
    async fn sync_point(&self) -> Result<()> {
        let _turn = self.write_turn(Priority::Background).await;
        sqlx::query("UPDATE sync_point SET syncs = syncs + 1")
            .execute(&self.pool)
            .await
            .map_err(MetadataError::db("write sync point"))?;
        Ok(())
    }

    /// Waits for this store's turn to write, for a write of one statement (see [`WriteTx`]).
    async fn write_turn(&self, priority: Priority) -> Turn {
        self.turns.take(priority).await
    }

    async fn topic_configs(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT name, value FROM topic_configs WHERE topic = ?")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("read topic configs"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    fn topic_from_row(
        row: &sqlx::sqlite::SqliteRow,
        configs: BTreeMap<String, String>,
    ) -> Result<Topic> {
        let id: String = row.get("topic_id");
        let id = uuid::Uuid::parse_str(&id).map_err(|e| MetadataError::Corrupt {
            message: format!("topic id {id:?}: {e}"),
        })?;
        Ok(Topic {
            name: row.get("name"),
            id,
            partitions: row.get("partitions"),
            configs,
            created_at_ms: row.get("created_at_ms"),
        })
    }
}

/// Whether a topic exists, inside a transaction.
async fn topic_exists(tx: &mut sqlx::SqliteConnection, name: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM topics WHERE name = ?")
        .bind(name)
        .fetch_optional(tx)
        .await
        .map_err(MetadataError::db("check topic"))?;
    Ok(row.is_some())
}

/// Inserts a topic's configs, inside a transaction.
async fn insert_topic_configs(
    tx: &mut sqlx::SqliteConnection,
    name: &str,
    configs: &BTreeMap<String, String>,
) -> Result<()> {
    for (key, value) in configs {
        sqlx::query("INSERT INTO topic_configs (topic, name, value) VALUES (?, ?, ?)")
            .bind(name)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("insert topic config"))?;
    }
    Ok(())
}

fn partition_from_row(row: &sqlx::sqlite::SqliteRow) -> PartitionState {
    let tp = TopicPartition::new(
        row.get::<String, _>("topic"),
        row.get::<i32, _>("partition_id"),
    );
    let holder: Option<String> = row.get("holder");
    let lease = holder.map(|holder| Lease {
        tp: tp.clone(),
        holder: AgentId(holder),
        epoch: LeaseEpoch(row.get("epoch")),
        expires_at_ms: row.get("expires_at_ms"),
    });
    PartitionState {
        tp,
        high_watermark: Offset(row.get("high_watermark")),
        log_start_offset: Offset(row.get("log_start_offset")),
        lease,
    }
}

fn entry_from_row(tp: &TopicPartition, row: &sqlx::sqlite::SqliteRow) -> Result<IndexEntry> {
    let to_u64 = |v: i64, what: &str| {
        u64::try_from(v).map_err(|_| MetadataError::Corrupt {
            message: format!("negative {what} {v} in the index of {tp}"),
        })
    };
    Ok(IndexEntry {
        tp: tp.clone(),
        base_offset: Offset(row.get("base_offset")),
        end_offset: Offset(row.get("end_offset")),
        object_key: row.get("object_key"),
        byte_start: to_u64(row.get("byte_start"), "byte_start")?,
        byte_len: to_u64(row.get("byte_len"), "byte_len")?,
        max_timestamp: row.get("max_timestamp"),
    })
}

fn lease_from_row(tp: &TopicPartition, row: &sqlx::sqlite::SqliteRow) -> Lease {
    Lease {
        tp: tp.clone(),
        holder: AgentId(row.get("holder")),
        epoch: LeaseEpoch(row.get("epoch")),
        expires_at_ms: row.get("expires_at_ms"),
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| MetadataError::Invalid {
        message: format!("{v} does not fit in a 64-bit signed integer"),
    })
}

const PARTITION_SELECT: &str =
    "SELECT p.topic, p.partition_id, p.high_watermark, p.log_start_offset, \
     CASE WHEN l.expires_at_ms > NOW THEN l.holder END AS holder, l.epoch, l.expires_at_ms \
     FROM partitions p LEFT JOIN leases l ON l.topic = p.topic AND l.partition_id = p.partition_id";

fn partition_select(filter: &str) -> String {
    format!("{} {filter}", PARTITION_SELECT.replace("NOW", NOW_MS))
}

#[async_trait::async_trait]
impl MetadataStore for SqliteStore {
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<Topic> {
        if partitions < 1 {
            return Err(MetadataError::Invalid {
                message: format!("a topic needs at least one partition, not {partitions}"),
            });
        }
        let mut tx = self.write_tx("begin create topic").await?;
        if topic_exists(&mut tx, name).await? {
            return Err(MetadataError::AlreadyExists {
                what: format!("topic {name:?}"),
            });
        }
        let id = uuid::Uuid::new_v4();
        let row = sqlx::query(&format!(
            "INSERT INTO topics (name, topic_id, partitions, created_at_ms) VALUES (?, ?, ?, {NOW_MS}) \
             RETURNING name, topic_id, partitions, created_at_ms"
        ))
        .bind(name)
        .bind(id.to_string())
        .bind(partitions)
        .fetch_one(&mut *tx)
        .await
        .map_err(MetadataError::db("insert topic"))?;
        insert_topic_configs(&mut tx, name, configs).await?;
        for p in 0..partitions {
            sqlx::query(
                "INSERT INTO partitions (topic, partition_id, high_watermark, log_start_offset) \
                 VALUES (?, ?, 0, 0)",
            )
            .bind(name)
            .bind(p)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("insert partition"))?;
        }
        let topic = SqliteStore::topic_from_row(&row, configs.clone())?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit create topic"))?;
        Ok(topic)
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let mut tx = self.write_tx("begin delete topic").await?;
        // Index entries, partitions and configs go by cascade. Lease rows stay (holder
        // cleared) so that a topic created again under the same name continues the epochs.
        let deleted = sqlx::query("DELETE FROM topics WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("delete topic"))?;
        if deleted.rows_affected() == 0 {
            return Err(MetadataError::NotFound {
                what: format!("topic {name:?}"),
            });
        }
        sqlx::query("UPDATE leases SET holder = NULL, expires_at_ms = 0 WHERE topic = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("clear leases of deleted topic"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit delete topic"))
    }

    async fn get_topic(&self, name: &str) -> Result<Option<Topic>> {
        let row = sqlx::query(
            "SELECT name, topic_id, partitions, created_at_ms FROM topics WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("read topic"))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let configs = self.topic_configs(name).await?;
                Ok(Some(SqliteStore::topic_from_row(&row, configs)?))
            }
        }
    }

    async fn list_topics(&self) -> Result<Vec<Topic>> {
        let rows = sqlx::query(
            "SELECT name, topic_id, partitions, created_at_ms FROM topics ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list topics"))?;
        let config_rows = sqlx::query("SELECT topic, name, value FROM topic_configs")
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("list topic configs"))?;
        let mut configs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for r in &config_rows {
            configs
                .entry(r.get(0))
                .or_default()
                .insert(r.get(1), r.get(2));
        }
        rows.iter()
            .map(|row| {
                let name: String = row.get("name");
                SqliteStore::topic_from_row(row, configs.remove(&name).unwrap_or_default())
            })
            .collect()
    }

    async fn list_partitions(&self, topic: &str) -> Result<Vec<PartitionState>> {
        let rows = sqlx::query(&partition_select(
            "WHERE p.topic = ? ORDER BY p.partition_id",
        ))
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list partitions"))?;
        Ok(rows.iter().map(partition_from_row).collect())
    }

    async fn get_partition(&self, tp: &TopicPartition) -> Result<Option<PartitionState>> {
        let row = sqlx::query(&partition_select(
            "WHERE p.topic = ? AND p.partition_id = ?",
        ))
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("read partition"))?;
        Ok(row.as_ref().map(partition_from_row))
    }

    async fn list_all_partitions(&self) -> Result<Vec<PartitionState>> {
        let rows = sqlx::query(&partition_select("ORDER BY p.topic, p.partition_id"))
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("list all partitions"))?;
        Ok(rows.iter().map(partition_from_row).collect())
    }

    async fn partition_sizes(&self) -> Result<Vec<(TopicPartition, u64)>> {
        let rows = sqlx::query(crate::PARTITION_SIZES_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("partition sizes"))?;
        rows.iter()
            .map(|row| {
                let topic: String = row
                    .try_get("topic")
                    .map_err(MetadataError::db("partition sizes"))?;
                let partition: i32 = row
                    .try_get("partition_id")
                    .map_err(MetadataError::db("partition sizes"))?;
                let bytes: i64 = row
                    .try_get("bytes")
                    .map_err(MetadataError::db("partition sizes"))?;
                // A sum of non-negative lengths; a negative one would be a corrupt row.
                Ok((
                    TopicPartition::new(topic, partition),
                    u64::try_from(bytes).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn register_agent(&self, agent: &AgentRegistration) -> Result<AgentInfo> {
        let mut tx = self.write_tx("begin register agent").await?;
        sqlx::query(&format!(
            "INSERT INTO agents (agent_id, node_id, advertised_addr, agent_group, last_heartbeat_ms) \
             VALUES (?, (SELECT COALESCE(MAX(node_id), -1) + 1 FROM agents), ?, ?, {NOW_MS}) \
             ON CONFLICT (agent_id) DO UPDATE SET advertised_addr = excluded.advertised_addr, \
             agent_group = excluded.agent_group, last_heartbeat_ms = excluded.last_heartbeat_ms"
        ))
        .bind(&agent.id.0)
        .bind(&agent.advertised_addr)
        .bind(&agent.group)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("register agent"))?;
        let row = sqlx::query(
            "SELECT agent_id, node_id, advertised_addr, agent_group, last_heartbeat_ms FROM agents WHERE agent_id = ?",
        )
        .bind(&agent.id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(MetadataError::db("read registered agent"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit register agent"))?;
        Ok(agent_from_row(&row))
    }

    async fn heartbeat(&self, agent: &AgentId) -> Result<()> {
        let _turn = self.write_turn(Priority::Normal).await;
        let updated = sqlx::query(&format!(
            "UPDATE agents SET last_heartbeat_ms = {NOW_MS} WHERE agent_id = ?"
        ))
        .bind(&agent.0)
        .execute(&self.pool)
        .await
        .map_err(MetadataError::db("heartbeat"))?;
        if updated.rows_affected() == 0 {
            return Err(MetadataError::NotFound {
                what: format!("agent {agent}"),
            });
        }
        Ok(())
    }

    async fn list_agents(&self) -> Result<Vec<AgentInfo>> {
        let rows = sqlx::query(
            "SELECT agent_id, node_id, advertised_addr, agent_group, last_heartbeat_ms FROM agents ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list agents"))?;
        Ok(rows.iter().map(agent_from_row).collect())
    }

    async fn live_agents(&self, within: Duration) -> Result<Vec<AgentInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT agent_id, node_id, advertised_addr, agent_group, last_heartbeat_ms FROM agents WHERE last_heartbeat_ms >= {NOW_MS} - ? ORDER BY node_id"
        ))
        .bind(ttl_ms(within))
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list live agents"))?;
        Ok(rows.iter().map(agent_from_row).collect())
    }

    async fn deregister_agent(&self, agent: &AgentId) -> Result<()> {
        let _turn = self.write_turn(Priority::Normal).await;
        sqlx::query("UPDATE agents SET last_heartbeat_ms = 0 WHERE agent_id = ?")
            .bind(&agent.0)
            .execute(&self.pool)
            .await
            .map_err(MetadataError::db("deregister agent"))?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let mut tx = self.write_tx("begin acquire lease").await?;
        let exists = sqlx::query("SELECT 1 FROM partitions WHERE topic = ? AND partition_id = ?")
            .bind(&tp.topic)
            .bind(tp.partition.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(MetadataError::db("check partition for lease"))?;
        if exists.is_none() {
            return Err(MetadataError::NotFound {
                what: format!("partition {tp}"),
            });
        }
        // Insert a fresh lease, or take over one that is free, expired or already ours; the
        // WHERE clause leaves a lease held by someone else untouched.
        let row = sqlx::query(&format!(
            "INSERT INTO leases (topic, partition_id, holder, epoch, expires_at_ms) \
             VALUES (?1, ?2, ?3, 1, {NOW_MS} + ?4) \
             ON CONFLICT (topic, partition_id) DO UPDATE SET holder = excluded.holder, \
             epoch = leases.epoch + 1, expires_at_ms = excluded.expires_at_ms \
             WHERE leases.holder IS NULL OR leases.holder = excluded.holder OR leases.expires_at_ms <= {NOW_MS} \
             RETURNING holder, epoch, expires_at_ms"
        ))
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(&holder.0)
        .bind(ttl_ms(ttl))
        .fetch_optional(&mut *tx)
        .await
        .map_err(MetadataError::db("acquire lease"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit acquire lease"))?;
        Ok(row.map(|row| lease_from_row(tp, &row)))
    }

    async fn renew_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        epoch: LeaseEpoch,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let row = sqlx::query(&format!(
            "UPDATE leases SET expires_at_ms = {NOW_MS} + ? \
             WHERE topic = ? AND partition_id = ? AND holder = ? AND epoch = ? \
             RETURNING holder, epoch, expires_at_ms"
        ))
        .bind(ttl_ms(ttl))
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(&holder.0)
        .bind(epoch.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("renew lease"))?;
        Ok(row.map(|row| lease_from_row(tp, &row)))
    }

    async fn release_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        epoch: LeaseEpoch,
    ) -> Result<()> {
        let _turn = self.write_turn(Priority::Normal).await;
        sqlx::query(
            "UPDATE leases SET holder = NULL, expires_at_ms = 0 \
             WHERE topic = ? AND partition_id = ? AND holder = ? AND epoch = ?",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(&holder.0)
        .bind(epoch.0)
        .execute(&self.pool)
        .await
        .map_err(MetadataError::db("release lease"))?;
        Ok(())
    }

    async fn commit(
        &self,
        object: &ObjectRecord,
        partitions: &[PartitionCommit],
    ) -> Result<Vec<std::result::Result<(), CommitRejection>>> {
        let mut tx = self.write_tx_as(Priority::Commit, "begin commit").await?;
        let committed =
            read_committed(&mut tx, &crate::fence::commit_partitions(partitions)).await?;
        let plan = crate::fence::plan_commit(partitions, committed)?;
        if plan.accepted_any() {
            insert_entries(&mut tx, plan.entries.iter().copied()).await?;
            let watermarks = json_rows(
                plan.watermarks
                    .iter()
                    .map(|(tp, hw)| serde_json::json!([tp.topic, tp.partition.0, hw.0])),
            );
            sqlx::query(
                "UPDATE partitions SET high_watermark = k.value ->> 2 FROM json_each(?) AS k \
                 WHERE partitions.topic = k.value ->> 0 AND partitions.partition_id = k.value ->> 1",
            )
            .bind(watermarks)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("advance high watermarks"))?;
            store_producer_states(&mut tx, &plan.producers).await?;
            insert_object(&mut tx, object).await?;
        }
        tx.commit()
            .await
            .map_err(MetadataError::db("commit flush"))?;
        Ok(plan.results)
    }

    async fn find_entries(
        &self,
        tp: &TopicPartition,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let rows = sqlx::query(
            "SELECT base_offset, end_offset, object_key, byte_start, byte_len, max_timestamp \
             FROM index_entries WHERE topic = ? AND partition_id = ? AND end_offset > ? \
             ORDER BY end_offset LIMIT ?",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(from.0)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("find index entries"))?;
        rows.iter().map(|row| entry_from_row(tp, row)).collect()
    }

    async fn find_entry_by_timestamp(
        &self,
        tp: &TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        let row = sqlx::query(
            "SELECT base_offset, end_offset, object_key, byte_start, byte_len, max_timestamp \
             FROM index_entries i WHERE topic = ? AND partition_id = ? AND max_timestamp >= ? \
             AND end_offset > (SELECT log_start_offset FROM partitions p \
                               WHERE p.topic = i.topic AND p.partition_id = i.partition_id) \
             ORDER BY base_offset LIMIT 1",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(timestamp)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("find index entry by timestamp"))?;
        row.as_ref().map(|row| entry_from_row(tp, row)).transpose()
    }

    async fn start_for_retained_bytes(
        &self,
        tp: &TopicPartition,
        max_bytes: u64,
    ) -> Result<Option<Offset>> {
        // The running sum from the newest entry back; the newest entry past the budget and
        // everything before it go.
        let row = sqlx::query(
            "SELECT end_offset FROM (\
               SELECT e.end_offset, SUM(e.byte_len) OVER (ORDER BY e.base_offset DESC) AS from_end \
               FROM index_entries e JOIN partitions p \
                 ON p.topic = e.topic AND p.partition_id = e.partition_id \
               WHERE e.topic = ? AND e.partition_id = ? AND e.end_offset > p.log_start_offset\
             ) AS t WHERE from_end > ? ORDER BY end_offset DESC LIMIT 1",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("find the retained-bytes start"))?;
        row.map(|row| {
            row.try_get::<i64, _>("end_offset")
                .map(Offset)
                .map_err(MetadataError::db("find the retained-bytes start"))
        })
        .transpose()
    }

    async fn find_stored_entries(
        &self,
        tp: &TopicPartition,
        from: Offset,
        limit: usize,
    ) -> Result<Vec<StoredEntry>> {
        let rows = sqlx::query(
            "SELECT e.base_offset, e.end_offset, e.object_key, e.byte_start, e.byte_len, \
             e.max_timestamp, e.leader_epoch, o.created_at_ms, o.size_bytes FROM index_entries e \
             JOIN objects o ON o.object_key = e.object_key \
             WHERE e.topic = ? AND e.partition_id = ? AND e.end_offset > ? \
             ORDER BY e.end_offset LIMIT ?",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(from.0)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("find stored index entries"))?;
        rows.iter()
            .map(|row| {
                Ok(StoredEntry {
                    entry: entry_from_row(tp, row)?,
                    leader_epoch: LeaseEpoch(row.get("leader_epoch")),
                    committed_at_ms: row.get("created_at_ms"),
                    object_bytes: u64::try_from(row.get::<i64, _>("size_bytes")).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn replace_entries(
        &self,
        object: &ObjectRecord,
        old: &[IndexEntry],
        new: &[StoredEntry],
    ) -> Result<Swap> {
        crate::fence::check_swap(&object.key, old, new)?;
        let (Some(first), Some(last)) = (old.first(), old.last()) else {
            return Ok(Swap::Changed);
        };
        let tp = &first.tp;
        // Index entries are never updated, and no entry is ever inserted naming an object an
        // earlier one named (a commit names the object it just wrote, a swap the one it just
        // merged), so the rows over `old`'s range are exactly `old` if there are as many as
        // `old` has and each names an object of `old`. Counted by the store under the writer
        // lock: comparing every column of every entry took 2-6 ms of it for 500 entries.
        let old_keys = json_rows(old.iter().map(|e| serde_json::json!(e.object_key)));
        let mut tx = self
            .write_tx_on(&self.lazy, Priority::Background, "begin compaction swap")
            .await?;
        // Both scans are bounded: the rows starting in the range (by the primary key), and the
        // one row before it, the only one that could reach into it (a partition's entries
        // never overlap). Selecting the rows with `end_offset > first AND base_offset < last`
        // instead walked the partition's index from one end up to the range, about 1 ms of the
        // writer lock per swap on a busy partition (half of what a swap held it).
        let row = sqlx::query(
            "SELECT (SELECT log_start_offset FROM partitions \
                     WHERE topic = ?1 AND partition_id = ?2) AS log_start, \
                    (SELECT end_offset FROM index_entries \
                     WHERE topic = ?1 AND partition_id = ?2 AND base_offset < ?3 \
                     ORDER BY base_offset DESC LIMIT 1) AS before_end, \
                    COUNT(*) AS present, \
                    COALESCE(SUM(object_key IN (SELECT value FROM json_each(?5))), 0) AS matching \
             FROM index_entries WHERE topic = ?1 AND partition_id = ?2 \
             AND base_offset >= ?3 AND base_offset < ?4",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(first.base_offset.0)
        .bind(last.end_offset.0)
        .bind(&old_keys)
        .fetch_one(&mut *tx)
        .await
        .map_err(MetadataError::db("read entries to replace"))?;
        let read = || MetadataError::db("read entries to replace");
        let Some(log_start) = row.try_get::<Option<i64>, _>("log_start").map_err(read())? else {
            return Ok(Swap::Changed);
        };
        let before_end: Option<i64> = row.try_get("before_end").map_err(read())?;
        let present: i64 = row.try_get("present").map_err(read())?;
        let matching: i64 = row.try_get("matching").map_err(read())?;
        let expected = to_i64(old.len() as u64)?;
        let reaches_in = before_end.is_some_and(|end| end > first.base_offset.0);
        if reaches_in || present != expected || matching != expected {
            return Ok(Swap::Changed);
        }
        sqlx::query(
            "DELETE FROM index_entries WHERE topic = ? AND partition_id = ? \
             AND base_offset >= ? AND base_offset < ?",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(first.base_offset.0)
        .bind(last.end_offset.0)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("delete replaced entries"))?;
        insert_object(&mut tx, object).await?;
        // Keeps "no entry ends at or below the log start" (new entries end where old ones
        // did, and those were above it, so this only guards against a future caller).
        // The last new entry ends where the last old one did, above the log start, so the new
        // object is always named (and the trigger of migration 0007 marks it when it no
        // longer is).
        insert_entries(
            &mut tx,
            new.iter()
                .filter(|s| s.entry.end_offset.0 > log_start)
                .map(|s| (&s.entry, s.leader_epoch)),
        )
        .await?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit compaction swap"))?;
        Ok(Swap::Replaced)
    }

    async fn claim_job(&self, job: &str, holder: &AgentId, ttl: Duration) -> Result<bool> {
        let _turn = self.write_turn(Priority::Normal).await;
        let done = sqlx::query(&format!(
            "INSERT INTO maintenance_jobs (job, holder, expires_at_ms) VALUES (?, ?, {NOW_MS} + ?) \
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, \
             expires_at_ms = excluded.expires_at_ms \
             WHERE maintenance_jobs.holder = excluded.holder OR maintenance_jobs.expires_at_ms <= {NOW_MS}"
        ))
        .bind(job)
        .bind(&holder.0)
        .bind(ttl_ms(ttl))
        .execute(&self.pool)
        .await
        .map_err(MetadataError::db("claim maintenance job"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn unreferenced_objects(&self, grace: Duration, limit: usize) -> Result<Vec<String>> {
        // Objects are marked as their last index entry goes (the trigger of migration 0007),
        // so this reads, then makes sure the marks it read are durable: a swap's commit is
        // not synced (see `SqliteStore::lazy`), and its objects are deleted on this answer.
        let rows = sqlx::query(&format!(
            "SELECT object_key FROM objects WHERE state = 'live' \
             AND unreferenced_since_ms <= {NOW_MS} - ? ORDER BY unreferenced_since_ms LIMIT ?"
        ))
        .bind(ttl_ms(grace))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list unreferenced objects"))?;
        let keys = rows
            .iter()
            .map(|row| {
                row.try_get("object_key")
                    .map_err(MetadataError::db("list unreferenced objects"))
            })
            .collect::<Result<Vec<String>>>()?;
        if !keys.is_empty() {
            self.sync_point().await?;
        }
        Ok(keys)
    }

    async fn forget_objects(&self, keys: &[String]) -> Result<()> {
        let _turn = self.write_turn(Priority::Background).await;
        sqlx::query(
            "DELETE FROM objects WHERE object_key IN (SELECT value FROM json_each(?)) \
             AND state = 'live' AND unreferenced_since_ms IS NOT NULL",
        )
        .bind(json_rows(keys.iter().map(|k| serde_json::json!(k))))
        .execute(&self.pool)
        .await
        .map_err(MetadataError::db("forget objects"))?;
        Ok(())
    }

    async fn claim_orphans(&self, keys: &[String], holder: &AgentId) -> Result<Vec<String>> {
        let keys_json = json_rows(keys.iter().map(|k| serde_json::json!(k)));
        let mut tx = self
            .write_tx_as(Priority::Background, "begin orphan claim")
            .await?;
        // `WHERE true`: SQLite's parser needs it to tell the upsert's ON CONFLICT from a join's ON.
        sqlx::query(&format!(
            "INSERT INTO objects (object_key, size_bytes, writer, created_at_ms, state) \
             SELECT value, 0, ?, {NOW_MS}, 'orphan' FROM json_each(?) WHERE true \
             ON CONFLICT (object_key) DO NOTHING"
        ))
        .bind(&holder.0)
        .bind(&keys_json)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("record orphans"))?;
        let orphans: Vec<String> = sqlx::query_scalar(
            "SELECT object_key FROM objects \
             WHERE object_key IN (SELECT value FROM json_each(?)) AND state = 'orphan' \
             ORDER BY object_key",
        )
        .bind(&keys_json)
        .fetch_all(&mut *tx)
        .await
        .map_err(MetadataError::db("read object states"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit orphan claim"))?;
        Ok(orphans)
    }

    async fn set_topic_configs(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut tx = self.write_tx("begin config change").await?;
        if !topic_exists(&mut tx, name).await? {
            return Err(MetadataError::NotFound {
                what: format!("topic {name:?}"),
            });
        }
        sqlx::query("DELETE FROM topic_configs WHERE topic = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("clear topic configs"))?;
        insert_topic_configs(&mut tx, name, configs).await?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit config change"))
    }

    async fn add_partitions(&self, name: &str, partitions: i32) -> Result<()> {
        let mut tx = self.write_tx("begin partition increase").await?;
        let current: Option<i32> = sqlx::query("SELECT partitions FROM topics WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(MetadataError::db("read partition count"))?
            .map(|r| r.get(0));
        let Some(current) = current else {
            return Err(MetadataError::NotFound {
                what: format!("topic {name:?}"),
            });
        };
        if partitions <= current {
            return Err(MetadataError::Invalid {
                message: format!(
                    "topic {name:?} has {current} partitions; the new count {partitions} must be larger"
                ),
            });
        }
        for p in current..partitions {
            sqlx::query(
                "INSERT INTO partitions (topic, partition_id, high_watermark, log_start_offset) \
                 VALUES (?, ?, 0, 0)",
            )
            .bind(name)
            .bind(p)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("insert partition"))?;
        }
        sqlx::query("UPDATE topics SET partitions = ? WHERE name = ?")
            .bind(partitions)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("update partition count"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit partition increase"))
    }

    async fn advance_log_start(&self, tp: &TopicPartition, offset: Offset) -> Result<Offset> {
        let mut tx = self.write_tx("begin log start change").await?;
        let row = sqlx::query(
            "SELECT high_watermark, log_start_offset FROM partitions WHERE topic = ? AND partition_id = ?",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(MetadataError::db("read partition"))?
        .ok_or_else(|| MetadataError::NotFound {
            what: format!("partition {tp}"),
        })?;
        let high_watermark: i64 = row.get(0);
        let log_start: i64 = row.get(1);
        if offset.0 > high_watermark || offset.0 < 0 {
            return Err(MetadataError::Invalid {
                message: format!("offset {offset} is outside [0, {high_watermark}] of {tp}"),
            });
        }
        let new_start = log_start.max(offset.0);
        sqlx::query(
            "UPDATE partitions SET log_start_offset = ? WHERE topic = ? AND partition_id = ?",
        )
        .bind(new_start)
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("advance log start"))?;
        sqlx::query(
            "DELETE FROM index_entries WHERE topic = ? AND partition_id = ? AND end_offset <= ?",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(new_start)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("delete entries below the log start"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit log start change"))?;
        Ok(Offset(new_start))
    }

    async fn clean_offset(&self, tp: &TopicPartition) -> Result<Offset> {
        sqlx::query_scalar(
            "SELECT clean_offset FROM partitions WHERE topic = ? AND partition_id = ?",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("read the log compaction checkpoint"))?
        .map(Offset)
        .ok_or_else(|| MetadataError::NotFound {
            what: format!("partition {tp}"),
        })
    }

    async fn advance_clean_offset(&self, tp: &TopicPartition, offset: Offset) -> Result<Offset> {
        let mut tx = self
            .write_tx_as(Priority::Background, "begin log compaction checkpoint")
            .await?;
        let moved: Option<i64> = sqlx::query_scalar(
            "UPDATE partitions SET clean_offset = MAX(clean_offset, MIN(?, high_watermark)) \
             WHERE topic = ? AND partition_id = ? RETURNING clean_offset",
        )
        .bind(offset.0)
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(MetadataError::db("advance the log compaction checkpoint"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit the log compaction checkpoint"))?;
        moved.map(Offset).ok_or_else(|| MetadataError::NotFound {
            what: format!("partition {tp}"),
        })
    }

    async fn epoch_end_offset(
        &self,
        tp: &TopicPartition,
        epoch: LeaseEpoch,
    ) -> Result<Option<(LeaseEpoch, Offset)>> {
        let row = sqlx::query(
            "SELECT (SELECT MAX(leader_epoch) FROM index_entries \
                     WHERE topic = p.topic AND partition_id = p.partition_id AND leader_epoch <= ?1) AS at_or_below, \
                    (SELECT MIN(base_offset) FROM index_entries \
                     WHERE topic = p.topic AND partition_id = p.partition_id AND leader_epoch > ?1) AS next_start, \
                    (SELECT MIN(leader_epoch) FROM index_entries \
                     WHERE topic = p.topic AND partition_id = p.partition_id AND leader_epoch > ?1) AS next_epoch, \
                    p.high_watermark, p.log_start_offset \
             FROM partitions p WHERE p.topic = ?2 AND p.partition_id = ?3",
        )
        .bind(epoch.0)
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("find the end offset of an epoch"))?;
        let Some(row) = row else {
            return Err(MetadataError::NotFound {
                what: format!("partition {tp}"),
            });
        };
        let at_or_below: Option<i64> = row.get("at_or_below");
        let next_start: Option<i64> = row.get("next_start");
        let next_epoch: Option<i64> = row.get("next_epoch");
        let high_watermark: i64 = row.get("high_watermark");
        Ok(match (at_or_below, next_start) {
            // Data at or below the epoch: its end is where the next epoch starts, or the
            // high watermark if no later epoch has written.
            (Some(e), next) if e >= 0 => {
                Some((LeaseEpoch(e), Offset(next.unwrap_or(high_watermark))))
            }
            // Only later epochs wrote: the requested epoch ends where the first of them
            // starts (Kafka answers with the requested epoch in this case).
            (_, Some(start)) if next_epoch.is_some_and(|n| n >= 0) => Some((epoch, Offset(start))),
            _ => None,
        })
    }

    async fn commit_group_offsets(&self, group: &str, offsets: &[GroupOffset]) -> Result<()> {
        let mut tx = self.write_tx("begin offset commit").await?;
        for o in offsets {
            sqlx::query(&format!(
                "INSERT INTO group_offsets (group_id, topic, partition_id, committed_offset, \
                 leader_epoch, metadata, commit_timestamp_ms) VALUES (?, ?, ?, ?, ?, ?, {NOW_MS}) \
                 ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET \
                 committed_offset = excluded.committed_offset, leader_epoch = excluded.leader_epoch, \
                 metadata = excluded.metadata, commit_timestamp_ms = excluded.commit_timestamp_ms"
            ))
            .bind(group)
            .bind(&o.tp.topic)
            .bind(o.tp.partition.0)
            .bind(o.offset.0)
            .bind(o.leader_epoch)
            .bind(&o.metadata)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("store a committed offset"))?;
        }
        tx.commit()
            .await
            .map_err(MetadataError::db("commit offset commit"))
    }

    async fn fetch_group_offsets(&self, group: &str) -> Result<Vec<GroupOffset>> {
        let rows = sqlx::query(
            "SELECT topic, partition_id, committed_offset, leader_epoch, metadata, commit_timestamp_ms \
             FROM group_offsets WHERE group_id = ? ORDER BY topic, partition_id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("fetch committed offsets"))?;
        Ok(rows
            .iter()
            .map(|r| GroupOffset {
                tp: TopicPartition::new(
                    r.get::<String, _>("topic"),
                    r.get::<i32, _>("partition_id"),
                ),
                offset: Offset(r.get("committed_offset")),
                leader_epoch: r.get("leader_epoch"),
                metadata: r.get("metadata"),
                commit_timestamp_ms: r.get("commit_timestamp_ms"),
            })
            .collect())
    }

    async fn list_offset_groups(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id")
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("list groups with offsets"))?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    async fn delete_group_offsets(&self, group: &str) -> Result<bool> {
        let _turn = self.write_turn(Priority::Normal).await;
        let deleted = sqlx::query("DELETE FROM group_offsets WHERE group_id = ?")
            .bind(group)
            .execute(&self.pool)
            .await
            .map_err(MetadataError::db("delete group offsets"))?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn allocate_producer_id(&self) -> Result<ProducerId> {
        let mut tx = self.write_tx("begin producer id allocation").await?;
        let row = sqlx::query(
            "UPDATE producer_id_sequence SET next_producer_id = next_producer_id + 1 \
             WHERE singleton = 0 RETURNING next_producer_id - 1 AS producer_id",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(MetadataError::db("advance the producer id sequence"))?;
        let id = ProducerId(row.get("producer_id"));
        sqlx::query(&format!(
            "INSERT INTO producers (producer_id, producer_epoch, created_at_ms, updated_at_ms) \
             VALUES (?, 0, {NOW_MS}, {NOW_MS})"
        ))
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("record a producer id"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit producer id allocation"))?;
        Ok(id)
    }

    async fn bump_producer_epoch(&self, id: ProducerId, epoch: ProducerEpoch) -> Result<EpochBump> {
        let mut tx = self.write_tx("begin producer epoch bump").await?;
        let row = sqlx::query("SELECT producer_epoch FROM producers WHERE producer_id = ?")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(MetadataError::db("read producer epoch"))?;
        let Some(row) = row else {
            return Ok(EpochBump::Unknown);
        };
        let current = ProducerEpoch(row.get("producer_epoch"));
        if epoch < current {
            return Ok(EpochBump::Fenced { current });
        }
        // Kafka never hands out i16::MAX as an epoch; past it a producer needs a new id.
        let Some(next) = epoch.0.checked_add(1).filter(|e| *e < i16::MAX) else {
            return Ok(EpochBump::Exhausted);
        };
        sqlx::query(&format!(
            "UPDATE producers SET producer_epoch = ?, updated_at_ms = {NOW_MS} WHERE producer_id = ?"
        ))
        .bind(next)
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("bump producer epoch"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit producer epoch bump"))?;
        Ok(EpochBump::Bumped(ProducerEpoch(next)))
    }

    async fn load_producer_states(&self, tp: &TopicPartition) -> Result<Vec<ProducerState>> {
        let states = sqlx::query(
            "SELECT producer_id, producer_epoch, last_sequence FROM producer_states \
             WHERE topic = ? AND partition_id = ? ORDER BY producer_id",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("read producer states"))?;
        let batches = sqlx::query(
            "SELECT producer_id, base_offset, first_sequence, last_sequence FROM producer_batches \
             WHERE topic = ? AND partition_id = ? ORDER BY producer_id, base_offset",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("read producer batches"))?;
        let mut by_producer: BTreeMap<i64, Vec<ProducerBatch>> = BTreeMap::new();
        for row in &batches {
            by_producer
                .entry(row.get("producer_id"))
                .or_default()
                .push(ProducerBatch {
                    first_sequence: row.get("first_sequence"),
                    last_sequence: row.get("last_sequence"),
                    base_offset: Offset(row.get("base_offset")),
                });
        }
        Ok(states
            .iter()
            .map(|row| {
                let id: i64 = row.get("producer_id");
                ProducerState {
                    producer_id: ProducerId(id),
                    producer_epoch: ProducerEpoch(row.get("producer_epoch")),
                    last_sequence: row.get("last_sequence"),
                    batches: by_producer.remove(&id).unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(MetadataError::db("ping"))?;
        Ok(())
    }
}

fn agent_from_row(row: &sqlx::sqlite::SqliteRow) -> AgentInfo {
    AgentInfo {
        id: AgentId(row.get("agent_id")),
        node_id: row.get("node_id"),
        advertised_addr: row.get("advertised_addr"),
        group: row.get("agent_group"),
        last_heartbeat_ms: row.get("last_heartbeat_ms"),
    }
}

/// How often the write-ahead log is copied back into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Once the write-ahead log holds this many frames (a page each: 8 MiB of 4 KiB pages), a
/// checkpoint also restarts it.
const RESTART_FRAMES: i64 = 2048;
/// How long a restarting checkpoint waits for readers to leave the log (holding up writers
/// meanwhile) before it gives up until the next round.
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// SQLite's automatic checkpoint runs inside whichever commit crosses the WAL's size limit,
/// with `synchronous=FULL` fsyncing the database file too, so a flush's commit would now and
/// then also copy megabytes of pages (and fsync them) that compaction swaps and garbage
/// collection dirtied, and its producers would wait for it. A task of the store's own does it
/// instead, on a connection of its own, until the store is dropped:
/// - every [`CHECKPOINT_INTERVAL`] a PASSIVE checkpoint, which never holds up a writer;
/// - once the log is [`RESTART_FRAMES`] long, a RESTART checkpoint. A PASSIVE checkpoint
///   copies the log back but leaves starting it over to the next writer, and only if no
///   reader is still in the log at that moment. With flushes committing every few
///   milliseconds while fetches read, that moment rarely comes: at 10 MB/s of produce the log
///   grew to 140–390 MB within 100 seconds, every commit appending to it (so its fsync also
///   journals the file's new size). RESTART waits (at most [`RESTART_WAIT`], holding up
///   writers) until the readers are out of the log, and the next commit starts it over,
///   writing over blocks the file already has.
fn checkpoint_in_background(
    pool: &SqlitePool,
    options: SqliteConnectOptions,
    turns: Arc<Turns>,
) -> Arc<()> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Arc::new(());
    };
    let pool = pool.clone();
    let alive = Arc::new(());
    let store_alive = Arc::downgrade(&alive);
    let options = options.busy_timeout(RESTART_WAIT);
    runtime.spawn(async move {
        let mut connection: Option<sqlx::SqliteConnection> = None;
        loop {
            tokio::time::sleep(CHECKPOINT_INTERVAL).await;
            if store_alive.upgrade().is_none() || pool.is_closed() {
                return;
            }
            let conn = match connection.as_mut() {
                Some(conn) => conn,
                None => match sqlx::ConnectOptions::connect(&options).await {
                    Ok(conn) => connection.insert(conn),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot open the checkpoint connection; retrying");
                        continue;
                    }
                },
            };
            if let Err(e) = checkpoint(conn, &turns).await {
                tracing::debug!(error = %e, "WAL checkpoint failed; retrying");
                connection = None;
            }
        }
    });
    alive
}

/// One round of [`checkpoint_in_background`]. A RESTART checkpoint takes SQLite's writer
/// lock, so it takes the store's turn to write first (see [`WriteTx`]).
async fn checkpoint(
    conn: &mut sqlx::SqliteConnection,
    turns: &Turns,
) -> std::result::Result<(), sqlx::Error> {
    // Each answers one row: busy (0 or 1), frames in the log, frames copied back.
    let started = Instant::now();
    let passive = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    crate::stats::checkpoint_done("passive", started.elapsed());
    let frames: i64 = passive.try_get(1)?;
    if frames >= RESTART_FRAMES {
        let _turn = turns.take(Priority::Checkpoint).await;
        let started = Instant::now();
        let restart = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut *conn)
            .await?;
        crate::stats::checkpoint_done("restart", started.elapsed());
        if restart.try_get::<i64, _>(0)? != 0 {
            tracing::debug!(frames, "readers kept the WAL from restarting; retrying");
        }
    }
    Ok(())
}

/// A JSON array of rows, bound as one parameter and read back with `json_each`: how one
/// statement writes (or reads) any number of rows. SQLite has no array parameters, and a
/// statement with a placeholder per value would be a new statement (prepared anew) for
/// every row count.
fn json_rows(rows: impl Iterator<Item = serde_json::Value>) -> String {
    serde_json::Value::Array(rows.collect()).to_string()
}

/// The committed state of a commit's partitions (those that exist), in one statement.
async fn read_committed(
    tx: &mut sqlx::SqliteConnection,
    tps: &[&TopicPartition],
) -> Result<BTreeMap<TopicPartition, crate::fence::Committed>> {
    let keys = json_rows(
        tps.iter()
            .map(|tp| serde_json::json!([tp.topic, tp.partition.0])),
    );
    let rows = sqlx::query(
        "SELECT p.topic, p.partition_id, p.high_watermark, l.holder, l.epoch \
         FROM json_each(?) AS k CROSS JOIN partitions p \
           ON p.topic = k.value ->> 0 AND p.partition_id = k.value ->> 1 \
         LEFT JOIN leases l ON l.topic = p.topic AND l.partition_id = p.partition_id",
    )
    .bind(keys)
    .fetch_all(&mut *tx)
    .await
    .map_err(MetadataError::db("read partitions for commit"))?;
    rows.iter()
        .map(|row| {
            let read = || MetadataError::db("read partitions for commit");
            let tp = TopicPartition::new(
                row.try_get::<String, _>("topic").map_err(read())?,
                row.try_get::<i32, _>("partition_id").map_err(read())?,
            );
            let committed = crate::fence::Committed {
                high_watermark: Offset(row.try_get("high_watermark").map_err(read())?),
                holder: row.try_get("holder").map_err(read())?,
                epoch: LeaseEpoch(
                    row.try_get::<Option<i64>, _>("epoch")
                        .map_err(read())?
                        .unwrap_or(0),
                ),
            };
            Ok((tp, committed))
        })
        .collect()
}

/// Records index entries committed (or swapped in), each under its epoch, in one
/// statement: what [`MetadataStore::commit`] and [`MetadataStore::replace_entries`] share.
async fn insert_entries<'a>(
    tx: &mut sqlx::SqliteConnection,
    entries: impl Iterator<Item = (&'a IndexEntry, LeaseEpoch)>,
) -> Result<()> {
    let rows = entries
        .map(|(e, epoch)| {
            Ok(serde_json::json!([
                e.tp.topic,
                e.tp.partition.0,
                e.base_offset.0,
                e.end_offset.0,
                e.object_key,
                to_i64(e.byte_start)?,
                to_i64(e.byte_len)?,
                e.max_timestamp,
                epoch.0
            ]))
        })
        .collect::<Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO index_entries (topic, partition_id, base_offset, end_offset, object_key, \
         byte_start, byte_len, max_timestamp, leader_epoch) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
         value ->> 6, value ->> 7, value ->> 8 FROM json_each(?)",
    )
    .bind(json_rows(rows.into_iter()))
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("insert index entries"))?;
    Ok(())
}

/// Records a live object. Its key must be new: a key any commit, swap or orphan tombstone
/// already recorded fails the statement, and with it the whole transaction.
async fn insert_object(tx: &mut sqlx::SqliteConnection, object: &ObjectRecord) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO objects (object_key, size_bytes, writer, created_at_ms) \
         VALUES (?, ?, ?, {NOW_MS})"
    ))
    .bind(&object.key)
    .bind(to_i64(object.size_bytes)?)
    .bind(&object.writer.0)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("record object"))?;
    Ok(())
}

/// Writes the new states of the producers that appended in a commit's accepted shares,
/// inside the commit's transaction: each state row is replaced and its remembered batches
/// with it, three statements for all of them.
async fn store_producer_states(
    tx: &mut sqlx::SqliteConnection,
    producers: &BTreeMap<(&TopicPartition, ProducerId), &ProducerState>,
) -> Result<()> {
    if producers.is_empty() {
        return Ok(());
    }
    let states = json_rows(producers.iter().map(|((tp, id), p)| {
        serde_json::json!([
            tp.topic,
            tp.partition.0,
            id.0,
            p.producer_epoch.0,
            p.last_sequence
        ])
    }));
    // `WHERE true`: SQLite's parser needs it to tell the upsert's ON CONFLICT from a join's ON.
    sqlx::query(&format!(
        "INSERT INTO producer_states (topic, partition_id, producer_id, producer_epoch, \
         last_sequence, updated_at_ms) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, {NOW_MS} \
         FROM json_each(?) WHERE true \
         ON CONFLICT (topic, partition_id, producer_id) DO UPDATE SET \
         producer_epoch = excluded.producer_epoch, last_sequence = excluded.last_sequence, \
         updated_at_ms = excluded.updated_at_ms"
    ))
    .bind(&states)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("store producer states"))?;
    sqlx::query(
        "DELETE FROM producer_batches WHERE rowid IN (SELECT b.rowid FROM json_each(?) AS k \
         CROSS JOIN producer_batches b ON b.topic = k.value ->> 0 \
         AND b.partition_id = k.value ->> 1 AND b.producer_id = k.value ->> 2)",
    )
    .bind(&states)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("replace producer batches"))?;
    if producers.values().all(|p| p.batches.is_empty()) {
        return Ok(());
    }
    let batches = json_rows(producers.iter().flat_map(|((tp, id), p)| {
        p.batches.iter().map(move |b| {
            serde_json::json!([
                tp.topic,
                tp.partition.0,
                id.0,
                b.base_offset.0,
                b.first_sequence,
                b.last_sequence
            ])
        })
    }));
    sqlx::query(
        "INSERT INTO producer_batches (topic, partition_id, producer_id, base_offset, \
         first_sequence, last_sequence) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
         FROM json_each(?)",
    )
    .bind(batches)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("store producer batches"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// The order in which writers got their turn.
    type Order = Arc<std::sync::Mutex<Vec<&'static str>>>;

    /// A writer that waits for its turn, notes it in `order`, and lets go at once.
    fn spawn_writer(
        turns: &Arc<Turns>,
        order: &Order,
        priority: Priority,
        name: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let (turns, order) = (turns.clone(), order.clone());
        tokio::spawn(async move {
            let _turn = turns.take(priority).await;
            order.lock().unwrap().push(name);
        })
    }

    /// The samples of one histogram with `writer` as its label, from a debugging recorder.
    fn turn_samples(
        snapshot: &[(
            metrics_util::CompositeKey,
            Option<metrics::Unit>,
            Option<metrics::SharedString>,
            metrics_util::debugging::DebugValue,
        )],
        name: &str,
        writer: &str,
    ) -> Vec<f64> {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "writer" && l.value() == writer)
            })
            .flat_map(|(.., value)| match value {
                metrics_util::debugging::DebugValue::Histogram(samples) => {
                    samples.iter().map(|s| s.into_inner()).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    /// A writer's wait for its turn and the time it held it are recorded, by writer: a flush
    /// commit that arrives while another write holds the turn for 20 ms waits about as long.
    #[test]
    fn turns_are_timed_by_writer() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async {
                let turns = Arc::new(Turns::default());
                let first = turns.take(Priority::Background).await;
                let commit = {
                    let turns = turns.clone();
                    tokio::spawn(async move { drop(turns.take(Priority::Commit).await) })
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(first);
                commit.await.unwrap();
            });
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let wait = "streamhouse_metadata_write_turn_wait_seconds";
        let held = "streamhouse_metadata_write_turn_held_seconds";
        let held_by_background = turn_samples(&snapshot, held, "background");
        assert_eq!(held_by_background.len(), 1, "{snapshot:?}");
        assert!(held_by_background[0] >= 0.019, "{held_by_background:?}");
        let commit_waited = turn_samples(&snapshot, wait, "commit");
        assert_eq!(commit_waited.len(), 1, "{snapshot:?}");
        assert!(commit_waited[0] >= 0.019, "{commit_waited:?}");
        assert_eq!(turn_samples(&snapshot, held, "commit").len(), 1);
        let background_waited = turn_samples(&snapshot, wait, "background");
        assert_eq!(background_waited.len(), 1);
        assert!(
            background_waited[0] < 0.019,
            "nothing held the turn before it"
        );
    }

    /// A background write that arrives while a flush commit waits lets that commit, and the
    /// ones arriving after it, go first; the other writes keep first-come-first-served order
    /// among themselves and with the commits.
    #[tokio::test]
    async fn flush_commits_go_before_background_writes() {
        let turns = Arc::new(Turns::default());
        let order: Order = Arc::default();
        let holder = turns.take(Priority::Normal).await;
        let writer = |priority, name| spawn_writer(&turns, &order, priority, name);
        let settle = || tokio::time::sleep(Duration::from_millis(5));
        let first = writer(Priority::Commit, "commit 1");
        settle().await;
        let background = writer(Priority::Background, "swap");
        settle().await;
        let normal = writer(Priority::Normal, "lease");
        settle().await;
        let second = writer(Priority::Commit, "commit 2");
        settle().await;
        drop(holder);
        for task in [first, background, normal, second] {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec!["commit 1", "lease", "commit 2", "swap"]
        );
    }

    /// A background write lets flush commits go first only for a while: then it queues
    /// like any other write, ahead of commits that arrive after.
    #[tokio::test]
    async fn a_background_write_yields_only_for_a_while() {
        let turns = Arc::new(Turns::default());
        let order: Order = Arc::default();
        let holder = turns.take(Priority::Normal).await;
        let writer = |priority, name| spawn_writer(&turns, &order, priority, name);
        let first = writer(Priority::Commit, "commit 1");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let background = writer(Priority::Background, "swap");
        tokio::time::sleep(BACKGROUND_YIELD * 3).await;
        let second = writer(Priority::Commit, "commit 2");
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(holder);
        for task in [first, background, second] {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["commit 1", "swap", "commit 2"]);
        assert_eq!(turns.commits_waiting.load(Ordering::Acquire), 0);
    }

    /// A fresh store in a temporary directory (kept as long as the directory is).
    async fn scratch_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&scratch_url(&dir)).await.unwrap();
        (dir, store)
    }

    fn scratch_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("metadata.db").display())
    }

    /// Readers that are always in the log keep a PASSIVE checkpoint from ever starting it
    /// over; the background checkpoints still keep it bounded instead of growing with
    /// everything written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_write_ahead_log_stays_bounded_under_steady_reads_and_writes() {
        let (dir, store) = scratch_store().await;
        sqlx::query("CREATE TABLE scratch (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
            .execute(&store.pool)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (pool, stop) = (store.pool.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        sqlx::query("SELECT sum(length(payload)) FROM scratch")
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        // Rows are overwritten in a ring, so the database itself stays at about 2 MiB; the
        // pauses keep the pace (under 20 MiB/s) below what a checkpoint round can keep up with.
        let payload = vec![7u8; 64 * 1024];
        let total = 64 * 1024 * 1024;
        let mut written = 0;
        for i in 0i64.. {
            if written >= total {
                break;
            }
            sqlx::query("INSERT OR REPLACE INTO scratch (id, payload) VALUES (?, ?)")
                .bind(i % 32)
                .bind(&payload)
                .execute(&store.pool)
                .await
                .unwrap();
            written += payload.len();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("metadata.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        let bound = 40 * 1024 * 1024;
        assert!(
            wal < bound,
            "the WAL grew to {wal} bytes after {written} bytes were written"
        );
    }

    /// Swaps commit on the one connection that does not wait for the fsync, and a hand-out
    /// of unnamed objects, which garbage collection then deletes, first commits a synced write
    /// (which makes every commit before it durable); an empty hand-out writes nothing.
    #[tokio::test]
    async fn only_swaps_commit_unsynced_and_a_hand_out_is_made_durable_first() {
        let (_dir, store) = scratch_store().await;
        let synchronous = |pool: &SqlitePool| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(synchronous(&store.lazy).await, 1, "NORMAL for swaps");
        assert_eq!(
            synchronous(&store.pool).await,
            2,
            "FULL for everything else"
        );
        let syncs = || async {
            sqlx::query_scalar::<_, i64>("SELECT syncs FROM sync_point")
                .fetch_one(&store.pool)
                .await
                .unwrap()
        };
        assert!(store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(syncs().await, 0);
        // An object a swap left unnamed, committed unsynced as a swap commits.
        sqlx::query(
            "INSERT INTO objects (object_key, size_bytes, writer, created_at_ms, state, \
             unreferenced_since_ms) VALUES ('old', 1, 'agent', 0, 'live', 0)",
        )
        .execute(&store.lazy)
        .await
        .unwrap();
        let due = store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap();
        assert_eq!(due, vec!["old".to_string()]);
        assert_eq!(
            syncs().await,
            1,
            "the hand-out committed a synced write first"
        );
    }

    /// A writer that gives up while it waits for the lock (its client went away) must not
    /// leave a transaction behind that holds the lock once it is free. (sqlx alone handles
    /// this simple case; the detached begin also closes the race it does not: see
    /// `begin_detached`.)
    #[tokio::test]
    async fn a_writer_that_gives_up_waiting_leaves_no_transaction_behind() {
        let (dir, store) = scratch_store().await;
        // The lock is held through a second store on the same file (as another process
        // would), so the waiter waits on SQLite itself, not on this store's turn to write.
        let other = SqliteStore::open(&scratch_url(&dir)).await.unwrap();
        let holder = other.write_tx("hold the lock").await.unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), store.write_tx("give up")).await;
        assert!(
            gave_up.is_err(),
            "the second writer should still be waiting"
        );
        holder.commit().await.unwrap();
        // Time for the abandoned begin to get the lock, if it is still coming.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let created = tokio::time::timeout(
            Duration::from_secs(5),
            store.create_topic("after", 1, &BTreeMap::new()),
        )
        .await;
        assert!(
            matches!(created, Ok(Ok(_))),
            "a write after the abandoned one: {created:?}"
        );
    }
}
