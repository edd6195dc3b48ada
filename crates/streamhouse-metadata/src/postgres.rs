//! The shared metadata backend: PostgreSQL through `sqlx`, for several agents on one store.
//!
//! Semantics are those of [`crate::sqlite`]; what SQLite got from its single writer, this
//! backend gets from row locks taken inside each transaction (READ COMMITTED):
//!
//! - `commit` locks the rows of all its partitions with `SELECT … FOR UPDATE`, in
//!   (topic, partition) order so that two commits over the same partitions cannot deadlock,
//!   then their lease rows `FOR SHARE`. Two commits to one partition therefore run one after
//!   the other, and the second sees the first's high watermark: at most one of them can
//!   succeed at a given expected high watermark. An `acquire_lease` waits for a running
//!   commit of the partition, so once it has returned no commit of the old epoch lands.
//! - Lease changes are single `INSERT … ON CONFLICT DO UPDATE … WHERE` / `UPDATE … WHERE`
//!   statements: PostgreSQL locks the row and re-checks the condition on its latest version.
//! - Producer ids come from one counter row that each allocation updates (and so locks).
//! - Times come from the database clock (`clock_timestamp()`), never from the agent.
//!
//! The URL is a libpq-style `postgres://user@host:port/db?…`. Besides what sqlx reads
//! (`application_name`, `options`, `sslmode`, …) it takes `max_connections` (default
//! 10), `acquire_timeout_ms` (default 10 000) and `statement_timeout_ms` (default 10 000).
//! The statement timeout is also the sessions' `idle_in_transaction_session_timeout`: an
//! agent paused (or cut off) inside a commit holds its partitions' row locks, and so blocks
//! the takeover of its leases, until the server ends its session. Keep it below the lease
//! TTL; `-c idle_in_transaction_session_timeout=…` in the URL's options wins.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row};

use crate::error::MetadataError;
use crate::types::*;
use crate::{MetadataStore, Result};

/// Milliseconds since the Unix epoch on the database's clock (the time of the statement's
/// execution, not of the transaction's start).
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connection settings read from the URL's query (and removed from it before sqlx parses
/// the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolSettings {
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// Splits our own query parameters off a PostgreSQL URL; returns the URL sqlx should parse
/// and the settings.
fn split_settings(url: &str) -> Result<(String, PoolSettings)> {
    let mut settings = PoolSettings::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), settings));
    };
    let invalid = |key: &str, value: &str| MetadataError::Invalid {
        message: format!("metadata URL parameter {key}={value:?} is not a valid number"),
    };
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "max_connections" => {
                settings.max_connections = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(key, value))?;
            }
            "acquire_timeout_ms" => {
                settings.acquire_timeout =
                    Duration::from_millis(value.parse().map_err(|_| invalid(key, value))?);
            }
            "statement_timeout_ms" => {
                settings.statement_timeout =
                    Duration::from_millis(value.parse().map_err(|_| invalid(key, value))?);
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, settings))
}

/// Metadata kept in a PostgreSQL database (the tables of the connection's `search_path`).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at a `postgres://` or `postgresql://` URL and migrates it.
    pub async fn open(url: &str) -> Result<PostgresStore> {
        let (url, settings) = split_settings(url)?;
        let mut options = PgConnectOptions::from_str(&url)
            .map_err(MetadataError::db("parse the PostgreSQL URL"))?;
        if options.get_application_name().is_none() {
            options = options.application_name("streamhouse");
        }
        // A statement stuck behind a lock or a slow server fails instead of hanging the
        // flush; an explicit `-c statement_timeout=…` in the URL's options wins.
        if !options
            .get_options()
            .is_some_and(|o| o.contains("statement_timeout"))
        {
            options =
                options.options([("statement_timeout", settings.statement_timeout.as_millis())]);
        }
        if !options
            .get_options()
            .is_some_and(|o| o.contains("idle_in_transaction_session_timeout"))
        {
            options = options.options([(
                "idle_in_transaction_session_timeout",
                settings.statement_timeout.as_millis(),
            )]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // Ping an idle connection before handing it out: one the server dropped (restart,
            // failover, pg_terminate_backend) is discarded and replaced instead of failing
            // the caller's query.
            .test_before_acquire(true)
            .idle_timeout(Duration::from_secs(300))
            .connect_with(options)
            .await
            .map_err(MetadataError::db("connect to PostgreSQL"))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(MetadataError::Migration)?;
        Ok(PostgresStore { pool })
    }

    async fn begin(&self, context: &'static str) -> Result<sqlx::Transaction<'static, Postgres>> {
        crate::begin_detached(&self.pool, "BEGIN")
            .await
            .map_err(MetadataError::db(context))
    }

    async fn topic_configs(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT name, value FROM topic_configs WHERE topic = $1")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("read topic configs"))?;
        rows.iter()
            .map(|r| Ok((get(r, "name")?, get(r, "value")?)))
            .collect()
    }
}

/// Reads a column, turning a missing column or an unexpected type into [`MetadataError::Corrupt`].
fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column).map_err(|e| MetadataError::Corrupt {
        message: format!("column {column}: {e}"),
    })
}

const TOPIC_COLUMNS: &str = "name, topic_id::text AS topic_id, partitions, created_at_ms";

fn topic_from_row(row: &PgRow, configs: BTreeMap<String, String>) -> Result<Topic> {
    let id: String = get(row, "topic_id")?;
    let id = uuid::Uuid::parse_str(&id).map_err(|e| MetadataError::Corrupt {
        message: format!("topic id {id:?}: {e}"),
    })?;
    Ok(Topic {
        name: get(row, "name")?,
        id,
        partitions: get(row, "partitions")?,
        configs,
        created_at_ms: get(row, "created_at_ms")?,
    })
}

/// Inserts a topic's configs, inside a transaction.
async fn insert_topic_configs(
    tx: &mut sqlx::PgConnection,
    name: &str,
    configs: &BTreeMap<String, String>,
) -> Result<()> {
    for (key, value) in configs {
        sqlx::query("INSERT INTO topic_configs (topic, name, value) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("insert topic config"))?;
    }
    Ok(())
}

/// Inserts partitions `from..to` of a topic (empty), inside a transaction.
async fn insert_partitions(
    tx: &mut sqlx::PgConnection,
    name: &str,
    from: i32,
    to: i32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO partitions (topic, partition_id, high_watermark, log_start_offset) \
         SELECT $1, p, 0, 0 FROM generate_series($2::INTEGER, $3::INTEGER - 1) AS p",
    )
    .bind(name)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("insert partitions"))?;
    Ok(())
}

fn partition_from_row(row: &PgRow) -> Result<PartitionState> {
    let tp = TopicPartition::new(
        get::<String>(row, "topic")?,
        get::<i32>(row, "partition_id")?,
    );
    let holder: Option<String> = get(row, "holder")?;
    let lease = match holder {
        None => None,
        Some(holder) => Some(Lease {
            tp: tp.clone(),
            holder: AgentId(holder),
            epoch: LeaseEpoch(get(row, "epoch")?),
            expires_at_ms: get(row, "expires_at_ms")?,
        }),
    };
    Ok(PartitionState {
        tp,
        high_watermark: Offset(get(row, "high_watermark")?),
        log_start_offset: Offset(get(row, "log_start_offset")?),
        lease,
    })
}

fn entry_from_row(tp: &TopicPartition, row: &PgRow) -> Result<IndexEntry> {
    let to_u64 = |v: i64, what: &str| {
        u64::try_from(v).map_err(|_| MetadataError::Corrupt {
            message: format!("negative {what} {v} in the index of {tp}"),
        })
    };
    Ok(IndexEntry {
        tp: tp.clone(),
        base_offset: Offset(get(row, "base_offset")?),
        end_offset: Offset(get(row, "end_offset")?),
        object_key: get(row, "object_key")?,
        byte_start: to_u64(get(row, "byte_start")?, "byte_start")?,
        byte_len: to_u64(get(row, "byte_len")?, "byte_len")?,
        max_timestamp: get(row, "max_timestamp")?,
    })
}

fn lease_from_row(tp: &TopicPartition, row: &PgRow) -> Result<Lease> {
    Ok(Lease {
        tp: tp.clone(),
        holder: AgentId(get(row, "holder")?),
        epoch: LeaseEpoch(get(row, "epoch")?),
        expires_at_ms: get(row, "expires_at_ms")?,
    })
}

fn agent_from_row(row: &PgRow) -> Result<AgentInfo> {
    Ok(AgentInfo {
        id: AgentId(get(row, "agent_id")?),
        node_id: get(row, "node_id")?,
        advertised_addr: get(row, "advertised_addr")?,
        group: get(row, "agent_group")?,
        last_heartbeat_ms: get(row, "last_heartbeat_ms")?,
    })
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| MetadataError::Invalid {
        message: format!("{v} does not fit in a 64-bit signed integer"),
    })
}

fn partition_select(filter: &str) -> String {
    format!(
        "SELECT p.topic, p.partition_id, p.high_watermark, p.log_start_offset, \
         CASE WHEN l.expires_at_ms > {NOW_MS} THEN l.holder END AS holder, l.epoch, l.expires_at_ms \
         FROM partitions p LEFT JOIN leases l ON l.topic = p.topic AND l.partition_id = p.partition_id \
         {filter}"
    )
}

const AGENT_COLUMNS: &str = "agent_id, node_id, advertised_addr, agent_group, last_heartbeat_ms";

/// Locks the partition rows (FOR UPDATE) and then their lease rows (FOR SHARE) of a commit,
/// both in (topic, partition) order so that concurrent commits over overlapping partitions
/// queue instead of deadlocking. Returns the locked state of every partition that exists.
async fn lock_partitions(
    tx: &mut sqlx::PgConnection,
    keys: &[&TopicPartition],
) -> Result<BTreeMap<TopicPartition, crate::fence::Committed>> {
    let topics: Vec<&str> = keys.iter().map(|tp| tp.topic.as_str()).collect();
    let partitions: Vec<i32> = keys.iter().map(|tp| tp.partition.0).collect();
    let rows = sqlx::query(
        "SELECT p.topic, p.partition_id, p.high_watermark FROM partitions p \
         JOIN UNNEST($1::TEXT[], $2::INTEGER[]) AS k (topic, partition_id) \
           ON k.topic = p.topic AND k.partition_id = p.partition_id \
         ORDER BY p.topic, p.partition_id FOR UPDATE OF p",
    )
    .bind(&topics)
    .bind(&partitions)
    .fetch_all(&mut *tx)
    .await
    .map_err(MetadataError::db("lock partitions for commit"))?;
    let mut locked = BTreeMap::new();
    for row in &rows {
        locked.insert(
            TopicPartition::new(
                get::<String>(row, "topic")?,
                get::<i32>(row, "partition_id")?,
            ),
            crate::fence::Committed {
                high_watermark: Offset(get(row, "high_watermark")?),
                ..Default::default()
            },
        );
    }
    // FOR SHARE keeps the lease rows as they are until the commit ends: an acquire (which
    // updates the row) waits for us, and we read the latest committed epoch.
    let rows = sqlx::query(
        "SELECT l.topic, l.partition_id, l.holder, l.epoch FROM leases l \
         JOIN UNNEST($1::TEXT[], $2::INTEGER[]) AS k (topic, partition_id) \
           ON k.topic = l.topic AND k.partition_id = l.partition_id \
         ORDER BY l.topic, l.partition_id FOR SHARE OF l",
    )
    .bind(&topics)
    .bind(&partitions)
    .fetch_all(&mut *tx)
    .await
    .map_err(MetadataError::db("lock leases for commit"))?;
    for row in &rows {
        let key = TopicPartition::new(
            get::<String>(row, "topic")?,
            get::<i32>(row, "partition_id")?,
        );
        if let Some(p) = locked.get_mut(&key) {
            p.holder = get(row, "holder")?;
            p.epoch = LeaseEpoch(get(row, "epoch")?);
        }
    }
    Ok(locked)
}

#[async_trait::async_trait]
impl MetadataStore for PostgresStore {
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
        let mut tx = self.begin("begin create topic").await?;
        // ON CONFLICT DO NOTHING: of two concurrent creations, the second waits for the first
        // and then inserts nothing, instead of failing on the primary key.
        let row = sqlx::query(&format!(
            "INSERT INTO topics (name, topic_id, partitions, created_at_ms) \
             VALUES ($1, $2::UUID, $3, {NOW_MS}) ON CONFLICT (name) DO NOTHING \
             RETURNING {TOPIC_COLUMNS}"
        ))
        .bind(name)
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(partitions)
        .fetch_optional(&mut *tx)
        .await
        .map_err(MetadataError::db("insert topic"))?;
        let Some(row) = row else {
            return Err(MetadataError::AlreadyExists {
                what: format!("topic {name:?}"),
            });
        };
        insert_topic_configs(&mut tx, name, configs).await?;
        insert_partitions(&mut tx, name, 0, partitions).await?;
        let topic = topic_from_row(&row, configs.clone())?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit create topic"))?;
        Ok(topic)
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let mut tx = self.begin("begin delete topic").await?;
        // Lock the partitions in the order commits do, so a concurrent commit and the
        // cascade below cannot deadlock.
        sqlx::query("SELECT 1 FROM partitions WHERE topic = $1 ORDER BY partition_id FOR UPDATE")
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(MetadataError::db("lock partitions of deleted topic"))?;
        // Index entries, partitions and configs go by cascade. Lease rows stay (holder
        // cleared) so that a topic created again under the same name continues the epochs.
        let deleted = sqlx::query("DELETE FROM topics WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("delete topic"))?;
        if deleted.rows_affected() == 0 {
            return Err(MetadataError::NotFound {
                what: format!("topic {name:?}"),
            });
        }
        sqlx::query("UPDATE leases SET holder = NULL, expires_at_ms = 0 WHERE topic = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("clear leases of deleted topic"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit delete topic"))
    }

    async fn get_topic(&self, name: &str) -> Result<Option<Topic>> {
        let row = sqlx::query(&format!(
            "SELECT {TOPIC_COLUMNS} FROM topics WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("read topic"))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let configs = self.topic_configs(name).await?;
                Ok(Some(topic_from_row(&row, configs)?))
            }
        }
    }

    async fn list_topics(&self) -> Result<Vec<Topic>> {
        // One transaction, so that topics and configs come from the same snapshot.
        let mut tx = self.begin("begin list topics").await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("begin list topics"))?;
        let rows = sqlx::query(&format!("SELECT {TOPIC_COLUMNS} FROM topics ORDER BY name"))
            .fetch_all(&mut *tx)
            .await
            .map_err(MetadataError::db("list topics"))?;
        let config_rows = sqlx::query("SELECT topic, name, value FROM topic_configs")
            .fetch_all(&mut *tx)
            .await
            .map_err(MetadataError::db("list topic configs"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("end list topics"))?;
        let mut configs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for r in &config_rows {
            configs
                .entry(get(r, "topic")?)
                .or_default()
                .insert(get(r, "name")?, get(r, "value")?);
        }
        rows.iter()
            .map(|row| {
                let name: String = get(row, "name")?;
                topic_from_row(row, configs.remove(&name).unwrap_or_default())
            })
            .collect()
    }

    async fn list_partitions(&self, topic: &str) -> Result<Vec<PartitionState>> {
        let rows = sqlx::query(&partition_select(
            "WHERE p.topic = $1 ORDER BY p.partition_id",
        ))
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list partitions"))?;
        rows.iter().map(partition_from_row).collect()
    }

    async fn get_partition(&self, tp: &TopicPartition) -> Result<Option<PartitionState>> {
        let row = sqlx::query(&partition_select(
            "WHERE p.topic = $1 AND p.partition_id = $2",
        ))
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("read partition"))?;
        row.as_ref().map(partition_from_row).transpose()
    }

    async fn list_all_partitions(&self) -> Result<Vec<PartitionState>> {
        let rows = sqlx::query(&partition_select("ORDER BY p.topic, p.partition_id"))
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("list all partitions"))?;
        rows.iter().map(partition_from_row).collect()
    }

    async fn partition_sizes(&self) -> Result<Vec<(TopicPartition, u64)>> {
        let rows = sqlx::query(crate::PARTITION_SIZES_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("partition sizes"))?;
        rows.iter()
            .map(|row| {
                let tp = TopicPartition::new(
                    get::<String>(row, "topic")?,
                    get::<i32>(row, "partition_id")?,
                );
                // A sum of non-negative lengths; a negative one would be a corrupt row.
                Ok((tp, u64::try_from(get::<i64>(row, "bytes")?).unwrap_or(0)))
            })
            .collect()
    }

    async fn register_agent(&self, agent: &AgentRegistration) -> Result<AgentInfo> {
        let mut tx = self.begin("begin register agent").await?;
        // Node ids are MAX + 1: two first registrations at once would pick the same one, so
        // registrations take turns (SHARE ROW EXCLUSIVE conflicts with itself; reads go on).
        sqlx::query("LOCK TABLE agents IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("lock agents"))?;
        let row = sqlx::query(&format!(
            "INSERT INTO agents (agent_id, node_id, advertised_addr, agent_group, last_heartbeat_ms) \
             VALUES ($1, (SELECT COALESCE(MAX(node_id), -1) + 1 FROM agents), $2, $3, {NOW_MS}) \
             ON CONFLICT (agent_id) DO UPDATE SET advertised_addr = excluded.advertised_addr, \
             agent_group = excluded.agent_group, last_heartbeat_ms = excluded.last_heartbeat_ms \
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(&agent.id.0)
        .bind(&agent.advertised_addr)
        .bind(&agent.group)
        .fetch_one(&mut *tx)
        .await
        .map_err(MetadataError::db("register agent"))?;
        let info = agent_from_row(&row)?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit register agent"))?;
        Ok(info)
    }

    async fn heartbeat(&self, agent: &AgentId) -> Result<()> {
        let updated = sqlx::query(&format!(
            "UPDATE agents SET last_heartbeat_ms = {NOW_MS} WHERE agent_id = $1"
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
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY node_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list agents"))?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn live_agents(&self, within: Duration) -> Result<Vec<AgentInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE last_heartbeat_ms >= {NOW_MS} - $1 ORDER BY node_id"
        ))
        .bind(ttl_ms(within))
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list live agents"))?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn deregister_agent(&self, agent: &AgentId) -> Result<()> {
        sqlx::query("UPDATE agents SET last_heartbeat_ms = 0 WHERE agent_id = $1")
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
        let mut tx = self.begin("begin acquire lease").await?;
        let exists = sqlx::query("SELECT 1 FROM partitions WHERE topic = $1 AND partition_id = $2")
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
        // Insert a fresh lease, or take over one that is free, expired or already ours. The
        // upsert locks the existing row (waiting for a commit that holds it FOR SHARE) and
        // evaluates the WHERE clause on its latest version, so of two agents racing for a
        // free lease exactly one gets it, and every acquire gets a new epoch.
        let row = sqlx::query(&format!(
            "INSERT INTO leases (topic, partition_id, holder, epoch, expires_at_ms) \
             VALUES ($1, $2, $3, 1, {NOW_MS} + $4) \
             ON CONFLICT (topic, partition_id) DO UPDATE SET holder = excluded.holder, \
             epoch = leases.epoch + 1, expires_at_ms = excluded.expires_at_ms \
             WHERE leases.holder IS NULL OR leases.holder = excluded.holder \
                OR leases.expires_at_ms <= {NOW_MS} \
             RETURNING holder, epoch, expires_at_ms"
        ))
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(&holder.0)
        .bind(ttl_ms(ttl))
        .fetch_optional(&mut *tx)
        .await
        .map_err(MetadataError::db("acquire lease"))?;
        let lease = row.map(|row| lease_from_row(tp, &row)).transpose()?;
        tx.commit()
            .await
            .map_err(MetadataError::db("commit acquire lease"))?;
        Ok(lease)
    }

    async fn renew_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        epoch: LeaseEpoch,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        // One UPDATE: it locks the row and re-checks holder and epoch on the latest version,
        // so a renewal racing an acquire by someone else either lands first or finds nothing.
        let row = sqlx::query(&format!(
            "UPDATE leases SET expires_at_ms = {NOW_MS} + $1 \
             WHERE topic = $2 AND partition_id = $3 AND holder = $4 AND epoch = $5 \
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
        row.map(|row| lease_from_row(tp, &row)).transpose()
    }

    async fn release_lease(
        &self,
        tp: &TopicPartition,
        holder: &AgentId,
        epoch: LeaseEpoch,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE leases SET holder = NULL, expires_at_ms = 0 \
             WHERE topic = $1 AND partition_id = $2 AND holder = $3 AND epoch = $4",
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
        let mut tx = self.begin("begin commit").await?;
        let committed =
            lock_partitions(&mut tx, &crate::fence::commit_partitions(partitions)).await?;
        let plan = crate::fence::plan_commit(partitions, committed)?;
        if plan.accepted_any() {
            insert_entries(&mut tx, plan.entries.iter().copied()).await?;
            let (topics, ids, watermarks): (Vec<&str>, Vec<i32>, Vec<i64>) = plan
                .watermarks
                .iter()
                .map(|(tp, hw)| (tp.topic.as_str(), tp.partition.0, hw.0))
                .collect();
            sqlx::query(
                "UPDATE partitions p SET high_watermark = k.high_watermark \
                 FROM UNNEST($1::TEXT[], $2::INTEGER[], $3::BIGINT[]) \
                   AS k (topic, partition_id, high_watermark) \
                 WHERE p.topic = k.topic AND p.partition_id = k.partition_id",
            )
            .bind(&topics)
            .bind(&ids)
            .bind(&watermarks)
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
             FROM index_entries WHERE topic = $1 AND partition_id = $2 AND end_offset > $3 \
             ORDER BY end_offset LIMIT $4",
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
             FROM index_entries i WHERE topic = $1 AND partition_id = $2 AND max_timestamp >= $3 \
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
               WHERE e.topic = $1 AND e.partition_id = $2 AND e.end_offset > p.log_start_offset\
             ) AS t WHERE from_end > $3 ORDER BY end_offset DESC LIMIT 1",
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
             WHERE e.topic = $1 AND e.partition_id = $2 AND e.end_offset > $3 \
             ORDER BY e.end_offset LIMIT $4",
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
                    leader_epoch: LeaseEpoch(get(row, "leader_epoch")?),
                    committed_at_ms: get(row, "created_at_ms")?,
                    object_bytes: u64::try_from(get::<i64>(row, "size_bytes")?).unwrap_or(0),
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
        let mut tx = self.begin("begin compaction swap").await?;
        // The partition's row lock orders the swap with commits and log start moves.
        let log_start: Option<i64> = sqlx::query_scalar(
            "SELECT log_start_offset FROM partitions WHERE topic = $1 AND partition_id = $2 FOR UPDATE",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(MetadataError::db("lock partition for compaction swap"))?;
        let Some(log_start) = log_start else {
            return Ok(Swap::Changed);
        };
        // The rows overlapping the range, found from the last one starting at or before it
        // (a partition's entries never overlap, so no earlier one can reach into it): both
        // bounds on the primary key, where `end_offset > $3 AND base_offset < $4` alone may
        // walk the partition's index from one end.
        let rows = sqlx::query(
            "SELECT base_offset, end_offset, object_key, byte_start, byte_len, max_timestamp \
             FROM index_entries WHERE topic = $1 AND partition_id = $2 \
             AND base_offset >= COALESCE((SELECT MAX(base_offset) FROM index_entries \
                 WHERE topic = $1 AND partition_id = $2 AND base_offset <= $3), $3) \
             AND end_offset > $3 AND base_offset < $4 ORDER BY base_offset",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .bind(first.base_offset.0)
        .bind(last.end_offset.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(MetadataError::db("read entries to replace"))?;
        let found = rows
            .iter()
            .map(|row| entry_from_row(tp, row))
            .collect::<Result<Vec<_>>>()?;
        if found != old {
            return Ok(Swap::Changed);
        }
        sqlx::query(
            "DELETE FROM index_entries WHERE topic = $1 AND partition_id = $2 \
             AND base_offset >= $3 AND base_offset < $4",
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
        let done = sqlx::query(&format!(
            "INSERT INTO maintenance_jobs (job, holder, expires_at_ms) VALUES ($1, $2, {NOW_MS} + $3) \
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
        // A commit records its object and its entries in one transaction, so this statement
        // sees either both or neither: a live object is never marked while named.
        sqlx::query(&format!(
            "UPDATE objects SET unreferenced_since_ms = {NOW_MS} \
             WHERE state = 'live' AND unreferenced_since_ms IS NULL AND NOT EXISTS \
             (SELECT 1 FROM index_entries e WHERE e.object_key = objects.object_key)"
        ))
        .execute(&self.pool)
        .await
        .map_err(MetadataError::db("mark unreferenced objects"))?;
        let rows = sqlx::query(&format!(
            "SELECT object_key FROM objects WHERE state = 'live' \
             AND unreferenced_since_ms <= {NOW_MS} - $1 ORDER BY unreferenced_since_ms LIMIT $2"
        ))
        .bind(ttl_ms(grace))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("list unreferenced objects"))?;
        rows.iter().map(|row| get(row, "object_key")).collect()
    }

    async fn forget_objects(&self, keys: &[String]) -> Result<()> {
        sqlx::query(
            "DELETE FROM objects WHERE object_key = ANY($1) AND state = 'live' \
             AND unreferenced_since_ms IS NOT NULL",
        )
        .bind(keys)
        .execute(&self.pool)
        .await
        .map_err(MetadataError::db("forget objects"))?;
        Ok(())
    }

    async fn claim_orphans(&self, keys: &[String], holder: &AgentId) -> Result<Vec<String>> {
        let mut tx = self.begin("begin orphan claim").await?;
        sqlx::query(&format!(
            "INSERT INTO objects (object_key, size_bytes, writer, created_at_ms, state) \
             SELECT k, 0, $2, {NOW_MS}, 'orphan' FROM UNNEST($1::text[]) AS k \
             ON CONFLICT (object_key) DO NOTHING"
        ))
        .bind(keys)
        .bind(&holder.0)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("record orphans"))?;
        let orphans: Vec<String> = sqlx::query_scalar(
            "SELECT object_key FROM objects WHERE object_key = ANY($1) AND state = 'orphan' \
             ORDER BY object_key",
        )
        .bind(keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(MetadataError::db("read orphans"))?;
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
        let mut tx = self.begin("begin config change").await?;
        // Lock the topic row: two concurrent replacements take turns instead of colliding
        // on the configs' primary key.
        let topic = sqlx::query("SELECT 1 FROM topics WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(MetadataError::db("lock topic"))?;
        if topic.is_none() {
            return Err(MetadataError::NotFound {
                what: format!("topic {name:?}"),
            });
        }
        sqlx::query("DELETE FROM topic_configs WHERE topic = $1")
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
        let mut tx = self.begin("begin partition increase").await?;
        let row = sqlx::query("SELECT partitions FROM topics WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(MetadataError::db("read partition count"))?;
        let Some(row) = row else {
            return Err(MetadataError::NotFound {
                what: format!("topic {name:?}"),
            });
        };
        let current: i32 = get(&row, "partitions")?;
        if partitions <= current {
            return Err(MetadataError::Invalid {
                message: format!(
                    "topic {name:?} has {current} partitions; the new count {partitions} must be larger"
                ),
            });
        }
        insert_partitions(&mut tx, name, current, partitions).await?;
        sqlx::query("UPDATE topics SET partitions = $1 WHERE name = $2")
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
        let mut tx = self.begin("begin log start change").await?;
        let row = sqlx::query(
            "SELECT high_watermark, log_start_offset FROM partitions \
             WHERE topic = $1 AND partition_id = $2 FOR UPDATE",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(MetadataError::db("read partition"))?
        .ok_or_else(|| MetadataError::NotFound {
            what: format!("partition {tp}"),
        })?;
        let high_watermark: i64 = get(&row, "high_watermark")?;
        let log_start: i64 = get(&row, "log_start_offset")?;
        if offset.0 > high_watermark || offset.0 < 0 {
            return Err(MetadataError::Invalid {
                message: format!("offset {offset} is outside [0, {high_watermark}] of {tp}"),
            });
        }
        let new_start = log_start.max(offset.0);
        sqlx::query(
            "UPDATE partitions SET log_start_offset = $1 WHERE topic = $2 AND partition_id = $3",
        )
        .bind(new_start)
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .execute(&mut *tx)
        .await
        .map_err(MetadataError::db("advance log start"))?;
        sqlx::query(
            "DELETE FROM index_entries WHERE topic = $1 AND partition_id = $2 AND end_offset <= $3",
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
            "SELECT clean_offset FROM partitions WHERE topic = $1 AND partition_id = $2",
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
        let moved: Option<i64> = sqlx::query_scalar(
            "UPDATE partitions SET clean_offset = GREATEST(clean_offset, LEAST($1, high_watermark)) \
             WHERE topic = $2 AND partition_id = $3 RETURNING clean_offset",
        )
        .bind(offset.0)
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(MetadataError::db("advance the log compaction checkpoint"))?;
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
                     WHERE topic = p.topic AND partition_id = p.partition_id AND leader_epoch <= $1) AS at_or_below, \
                    (SELECT MIN(base_offset) FROM index_entries \
                     WHERE topic = p.topic AND partition_id = p.partition_id AND leader_epoch > $1) AS next_start, \
                    (SELECT MIN(leader_epoch) FROM index_entries \
                     WHERE topic = p.topic AND partition_id = p.partition_id AND leader_epoch > $1) AS next_epoch, \
                    p.high_watermark \
             FROM partitions p WHERE p.topic = $2 AND p.partition_id = $3",
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
        let at_or_below: Option<i64> = get(&row, "at_or_below")?;
        let next_start: Option<i64> = get(&row, "next_start")?;
        let next_epoch: Option<i64> = get(&row, "next_epoch")?;
        let high_watermark: i64 = get(&row, "high_watermark")?;
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
        // Upsert in (topic, partition) order so that two commits of one group lock their
        // rows in the same order; the sort is stable, so a partition listed twice still
        // ends at its last value.
        let mut ordered: Vec<&GroupOffset> = offsets.iter().collect();
        ordered.sort_by(|a, b| a.tp.cmp(&b.tp));
        let mut tx = self.begin("begin offset commit").await?;
        for o in ordered {
            sqlx::query(&format!(
                "INSERT INTO group_offsets (group_id, topic, partition_id, committed_offset, \
                 leader_epoch, metadata, commit_timestamp_ms) VALUES ($1, $2, $3, $4, $5, $6, {NOW_MS}) \
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
             FROM group_offsets WHERE group_id = $1 ORDER BY topic, partition_id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await
        .map_err(MetadataError::db("fetch committed offsets"))?;
        rows.iter()
            .map(|r| {
                Ok(GroupOffset {
                    tp: TopicPartition::new(
                        get::<String>(r, "topic")?,
                        get::<i32>(r, "partition_id")?,
                    ),
                    offset: Offset(get(r, "committed_offset")?),
                    leader_epoch: get(r, "leader_epoch")?,
                    metadata: get(r, "metadata")?,
                    commit_timestamp_ms: get(r, "commit_timestamp_ms")?,
                })
            })
            .collect()
    }

    async fn list_offset_groups(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id")
            .fetch_all(&self.pool)
            .await
            .map_err(MetadataError::db("list groups with offsets"))?;
        rows.iter().map(|r| get(r, "group_id")).collect()
    }

    async fn delete_group_offsets(&self, group: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM group_offsets WHERE group_id = $1")
            .bind(group)
            .execute(&self.pool)
            .await
            .map_err(MetadataError::db("delete group offsets"))?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn allocate_producer_id(&self) -> Result<ProducerId> {
        let mut tx = self.begin("begin producer id allocation").await?;
        // The UPDATE locks the counter row until this transaction ends: concurrent
        // allocations (from any agent) queue on it and each gets its own id.
        let row = sqlx::query(
            "UPDATE producer_id_sequence SET next_producer_id = next_producer_id + 1 \
             WHERE singleton = 0 RETURNING next_producer_id - 1 AS producer_id",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(MetadataError::db("advance the producer id sequence"))?;
        let id = ProducerId(get(&row, "producer_id")?);
        sqlx::query(&format!(
            "INSERT INTO producers (producer_id, producer_epoch, created_at_ms, updated_at_ms) \
             VALUES ($1, 0, {NOW_MS}, {NOW_MS})"
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
        let mut tx = self.begin("begin producer epoch bump").await?;
        let row =
            sqlx::query("SELECT producer_epoch FROM producers WHERE producer_id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(MetadataError::db("read producer epoch"))?;
        let Some(row) = row else {
            return Ok(EpochBump::Unknown);
        };
        let current = ProducerEpoch(get(&row, "producer_epoch")?);
        if epoch < current {
            return Ok(EpochBump::Fenced { current });
        }
        // Kafka never hands out i16::MAX as an epoch; past it a producer needs a new id.
        let Some(next) = epoch.0.checked_add(1).filter(|e| *e < i16::MAX) else {
            return Ok(EpochBump::Exhausted);
        };
        sqlx::query(&format!(
            "UPDATE producers SET producer_epoch = $1, updated_at_ms = {NOW_MS} WHERE producer_id = $2"
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
        // One snapshot for both queries, so states and batches of the same commit match.
        let mut tx = self.begin("begin reading producer states").await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(MetadataError::db("begin reading producer states"))?;
        let states = sqlx::query(
            "SELECT producer_id, producer_epoch, last_sequence FROM producer_states \
             WHERE topic = $1 AND partition_id = $2 ORDER BY producer_id",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(MetadataError::db("read producer states"))?;
        let batches = sqlx::query(
            "SELECT producer_id, base_offset, first_sequence, last_sequence FROM producer_batches \
             WHERE topic = $1 AND partition_id = $2 ORDER BY producer_id, base_offset",
        )
        .bind(&tp.topic)
        .bind(tp.partition.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(MetadataError::db("read producer batches"))?;
        tx.commit()
            .await
            .map_err(MetadataError::db("end reading producer states"))?;
        let mut by_producer: BTreeMap<i64, Vec<ProducerBatch>> = BTreeMap::new();
        for row in &batches {
            by_producer
                .entry(get(row, "producer_id")?)
                .or_default()
                .push(ProducerBatch {
                    first_sequence: get(row, "first_sequence")?,
                    last_sequence: get(row, "last_sequence")?,
                    base_offset: Offset(get(row, "base_offset")?),
                });
        }
        states
            .iter()
            .map(|row| {
                let id: i64 = get(row, "producer_id")?;
                Ok(ProducerState {
                    producer_id: ProducerId(id),
                    producer_epoch: ProducerEpoch(get(row, "producer_epoch")?),
                    last_sequence: get(row, "last_sequence")?,
                    batches: by_producer.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(MetadataError::db("ping"))?;
        Ok(())
    }
}

/// Records index entries committed (or swapped in), each under its epoch, in one
/// statement (one array parameter per column): what [`MetadataStore::commit`] and
/// [`MetadataStore::replace_entries`] share.
async fn insert_entries<'a>(
    tx: &mut sqlx::PgConnection,
    entries: impl Iterator<Item = (&'a IndexEntry, LeaseEpoch)>,
) -> Result<()> {
    let mut columns = EntryColumns::default();
    for (e, epoch) in entries {
        columns.topic.push(e.tp.topic.as_str());
        columns.partition_id.push(e.tp.partition.0);
        columns.base_offset.push(e.base_offset.0);
        columns.end_offset.push(e.end_offset.0);
        columns.object_key.push(e.object_key.as_str());
        columns.byte_start.push(to_i64(e.byte_start)?);
        columns.byte_len.push(to_i64(e.byte_len)?);
        columns.max_timestamp.push(e.max_timestamp);
        columns.leader_epoch.push(epoch.0);
    }
    if columns.topic.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO index_entries (topic, partition_id, base_offset, end_offset, object_key, \
         byte_start, byte_len, max_timestamp, leader_epoch) \
         SELECT * FROM UNNEST($1::TEXT[], $2::INTEGER[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], \
         $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[])",
    )
    .bind(&columns.topic)
    .bind(&columns.partition_id)
    .bind(&columns.base_offset)
    .bind(&columns.end_offset)
    .bind(&columns.object_key)
    .bind(&columns.byte_start)
    .bind(&columns.byte_len)
    .bind(&columns.max_timestamp)
    .bind(&columns.leader_epoch)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("insert index entries"))?;
    Ok(())
}

/// The columns of [`insert_entries`]' rows.
#[derive(Default)]
struct EntryColumns<'a> {
    topic: Vec<&'a str>,
    partition_id: Vec<i32>,
    base_offset: Vec<i64>,
    end_offset: Vec<i64>,
    object_key: Vec<&'a str>,
    byte_start: Vec<i64>,
    byte_len: Vec<i64>,
    max_timestamp: Vec<i64>,
    leader_epoch: Vec<i64>,
}

/// Records a live object. Its key must be new: a key any commit, swap or orphan tombstone
/// already recorded fails the statement, and with it the whole transaction.
async fn insert_object(tx: &mut sqlx::PgConnection, object: &ObjectRecord) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO objects (object_key, size_bytes, writer, created_at_ms) \
         VALUES ($1, $2, $3, {NOW_MS})"
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
/// inside the commit's transaction (which holds the partitions' row locks): each state row
/// is replaced and its remembered batches with it, three statements for all of them.
async fn store_producer_states(
    tx: &mut sqlx::PgConnection,
    producers: &BTreeMap<(&TopicPartition, ProducerId), &ProducerState>,
) -> Result<()> {
    if producers.is_empty() {
        return Ok(());
    }
    let mut topics = Vec::new();
    let mut partition_ids = Vec::new();
    let mut producer_ids = Vec::new();
    let mut epochs = Vec::new();
    let mut sequences = Vec::new();
    for ((tp, id), p) in producers {
        topics.push(tp.topic.as_str());
        partition_ids.push(tp.partition.0);
        producer_ids.push(id.0);
        epochs.push(p.producer_epoch.0);
        sequences.push(p.last_sequence);
    }
    sqlx::query(&format!(
        "INSERT INTO producer_states (topic, partition_id, producer_id, producer_epoch, \
         last_sequence, updated_at_ms) \
         SELECT k.*, {NOW_MS} FROM UNNEST($1::TEXT[], $2::INTEGER[], $3::BIGINT[], \
         $4::SMALLINT[], $5::INTEGER[]) AS k \
         ON CONFLICT (topic, partition_id, producer_id) DO UPDATE SET \
         producer_epoch = excluded.producer_epoch, last_sequence = excluded.last_sequence, \
         updated_at_ms = excluded.updated_at_ms"
    ))
    .bind(&topics)
    .bind(&partition_ids)
    .bind(&producer_ids)
    .bind(&epochs)
    .bind(&sequences)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("store producer states"))?;
    sqlx::query(
        "DELETE FROM producer_batches b \
         USING UNNEST($1::TEXT[], $2::INTEGER[], $3::BIGINT[]) AS k (topic, partition_id, producer_id) \
         WHERE b.topic = k.topic AND b.partition_id = k.partition_id \
         AND b.producer_id = k.producer_id",
    )
    .bind(&topics)
    .bind(&partition_ids)
    .bind(&producer_ids)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("replace producer batches"))?;
    let (mut topics, mut partition_ids, mut producer_ids) = (Vec::new(), Vec::new(), Vec::new());
    let (mut base_offsets, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
    for ((tp, id), p) in producers {
        for b in &p.batches {
            topics.push(tp.topic.as_str());
            partition_ids.push(tp.partition.0);
            producer_ids.push(id.0);
            base_offsets.push(b.base_offset.0);
            firsts.push(b.first_sequence);
            lasts.push(b.last_sequence);
        }
    }
    if topics.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO producer_batches (topic, partition_id, producer_id, base_offset, \
         first_sequence, last_sequence) \
         SELECT * FROM UNNEST($1::TEXT[], $2::INTEGER[], $3::BIGINT[], $4::BIGINT[], \
         $5::INTEGER[], $6::INTEGER[])",
    )
    .bind(&topics)
    .bind(&partition_ids)
    .bind(&producer_ids)
    .bind(&base_offsets)
    .bind(&firsts)
    .bind(&lasts)
    .execute(&mut *tx)
    .await
    .map_err(MetadataError::db("store producer batches"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_off_the_url_and_the_rest_stays() {
        let (url, s) = split_settings("postgres://u@h:5432/db").unwrap();
        assert_eq!(url, "postgres://u@h:5432/db");
        assert_eq!(s, PoolSettings::default());
        let (url, s) = split_settings(
            "postgres://u@h/db?max_connections=3&application_name=x&statement_timeout_ms=500&acquire_timeout_ms=250&options=-c%20search_path%3Ds",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u@h/db?application_name=x&options=-c%20search_path%3Ds"
        );
        assert_eq!(
            s,
            PoolSettings {
                max_connections: 3,
                acquire_timeout: Duration::from_millis(250),
                statement_timeout: Duration::from_millis(500),
            }
        );
        let (url, _) = split_settings("postgres://h/db?max_connections=2").unwrap();
        assert_eq!(url, "postgres://h/db");
        assert!(split_settings("postgres://h/db?max_connections=0").is_err());
        assert!(split_settings("postgres://h/db?statement_timeout_ms=x").is_err());
    }
}
