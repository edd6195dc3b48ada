//! The contract every metadata backend must meet. Each test takes a fresh store of every
//! backend from [`backends`] (SQLite in a temp dir, PostgreSQL in a schema of its own), so a
//! new backend joins by adding one entry there.
//!
//! PostgreSQL is expected at `STREAMHOUSE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the tests fail, not skip, when it is missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use streamhouse_metadata::*;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Keeps a backend's storage alive for the test, and removes it afterwards.
#[allow(dead_code)] // The fields are held for their Drop.
enum Scratch {
    Dir(tempfile::TempDir),
    Schema(PostgresSchema),
}

/// A schema of its own for one test, so tests in parallel processes never see each other's
/// tables; dropped (with its tables) when the test ends.
struct PostgresSchema {
    server_url: String,
    name: String,
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        let (url, name) = (self.server_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot run its own tasks while we wait
        // here, so a store connection may still be inside a transaction (sqlx rolls back
        // dropped transactions on a spawned task) and hold locks. End the store's sessions
        // (their application_name is the schema's name) and then drop the schema, on a
        // short-lived runtime of our own. Failing to drop only leaves a schema behind.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
                    return;
                };
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                     WHERE application_name = $1",
                )
                .bind(&name)
                .execute(&mut conn)
                .await;
                let _ = sqlx::query("SET lock_timeout = '10s'")
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&mut conn)
                    .await;
            });
        })
        .join();
    }
}

fn postgres_server_url() -> String {
    std::env::var("STREAMHOUSE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

/// Creates an empty schema on the test PostgreSQL server; returns it with a store URL whose
/// connections use it, named by the schema's name as their `application_name`, with `extra`
/// query parameters.
async fn postgres_schema(extra: &str) -> (PostgresSchema, String) {
    let server_url = postgres_server_url();
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(&server_url),
    )
    .await;
    let mut conn = match connect {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL at {server_url} is unreachable ({e}); the metadata contract tests \
             need it: start it, or point STREAMHOUSE_TEST_POSTGRES_URL at one"
        ),
        Err(_) => panic!(
            "PostgreSQL at {server_url} did not answer within 10 s; the metadata contract \
             tests need it: start it, or point STREAMHOUSE_TEST_POSTGRES_URL at one"
        ),
    };
    let name = format!("sh_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test schema");
    let separator = if server_url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{server_url}{separator}options=-c%20search_path%3D{name}&application_name={name}{extra}"
    );
    (PostgresSchema { server_url, name }, url)
}

/// A fresh, empty store URL of every backend, with what keeps its storage.
async fn backend_urls() -> Vec<(Scratch, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}/metadata.db", dir.path().display());
    let (schema, postgres) = postgres_schema("").await;
    vec![
        (Scratch::Dir(dir), sqlite),
        (Scratch::Schema(schema), postgres),
    ]
}

/// A fresh, empty store of every backend.
async fn backends() -> Vec<(Scratch, Arc<dyn MetadataStore>)> {
    let mut stores = Vec::new();
    for (scratch, url) in backend_urls().await {
        let store = open(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e:?}"));
        stores.push((scratch, store));
    }
    stores
}

fn agent(id: &str) -> AgentId {
    AgentId(id.to_string())
}

fn commit_for(
    holder: &AgentId,
    epoch: LeaseEpoch,
    tp: &TopicPartition,
    base: i64,
    end: i64,
    key: &str,
) -> PartitionCommit {
    PartitionCommit {
        holder: holder.clone(),
        epoch,
        expected_high_watermark: Offset(base),
        entry: IndexEntry {
            tp: tp.clone(),
            base_offset: Offset(base),
            end_offset: Offset(end),
            object_key: key.to_string(),
            byte_start: 0,
            byte_len: 10,
            max_timestamp: 1000 + end,
        },
        producers: Vec::new(),
    }
}

fn object(key: &str, writer: &AgentId) -> ObjectRecord {
    ObjectRecord {
        key: key.to_string(),
        size_bytes: 10,
        writer: writer.clone(),
    }
}

#[tokio::test]
async fn topics_are_created_listed_and_deleted() {
    for (_scratch, store) in backends().await {
        let mut configs = BTreeMap::new();
        configs.insert("max.message.bytes".to_string(), "2048".to_string());
        let t = store.create_topic("orders", 3, &configs).await.unwrap();
        assert_eq!(t.partitions, 3);
        assert!(matches!(
            store.create_topic("orders", 1, &BTreeMap::new()).await,
            Err(MetadataError::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.create_topic("none", 0, &BTreeMap::new()).await,
            Err(MetadataError::Invalid { .. })
        ));
        let got = store.get_topic("orders").await.unwrap().unwrap();
        assert_eq!(got, t);
        assert_eq!(
            got.configs.get("max.message.bytes").map(String::as_str),
            Some("2048")
        );
        let parts = store.list_partitions("orders").await.unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts
            .iter()
            .all(|p| p.high_watermark == Offset(0) && p.lease.is_none()));
        assert_eq!(store.list_topics().await.unwrap().len(), 1);
        store.delete_topic("orders").await.unwrap();
        assert!(store.get_topic("orders").await.unwrap().is_none());
        assert!(store.list_partitions("orders").await.unwrap().is_empty());
        assert!(matches!(
            store.delete_topic("orders").await,
            Err(MetadataError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn agents_keep_their_node_id() {
    for (_scratch, store) in backends().await {
        let reg = |id: &str, addr: &str| AgentRegistration {
            id: agent(id),
            advertised_addr: addr.to_string(),
            group: "default".to_string(),
        };
        let a = store.register_agent(&reg("a", "h:1")).await.unwrap();
        let b = store.register_agent(&reg("b", "h:2")).await.unwrap();
        assert_ne!(a.node_id, b.node_id);
        let a2 = store.register_agent(&reg("a", "h:3")).await.unwrap();
        assert_eq!(a2.node_id, a.node_id);
        assert_eq!(a2.advertised_addr, "h:3");
        store.heartbeat(&agent("a")).await.unwrap();
        assert!(store.heartbeat(&agent("zzz")).await.is_err());
        assert_eq!(store.list_agents().await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn liveness_follows_heartbeats_on_the_store_clock() {
    for (_scratch, store) in backends().await {
        for id in ["a", "b"] {
            store
                .register_agent(&AgentRegistration {
                    id: agent(id),
                    advertised_addr: format!("{id}:9092"),
                    group: "g".to_string(),
                })
                .await
                .unwrap();
        }
        let live = |within| {
            let store = store.clone();
            async move {
                let agents = store.live_agents(within).await.unwrap();
                agents.into_iter().map(|a| a.id.0).collect::<Vec<_>>()
            }
        };
        assert_eq!(live(Duration::from_secs(30)).await, ["a", "b"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.heartbeat(&agent("b")).await.unwrap();
        // a's heartbeat is 300 ms old, b's fresh.
        assert_eq!(live(Duration::from_millis(200)).await, ["b"]);
        // A graceful shutdown ends liveness at once; registering again restores it.
        store.deregister_agent(&agent("b")).await.unwrap();
        assert_eq!(live(Duration::from_secs(30)).await, ["a"]);
        assert_eq!(store.list_agents().await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn all_partitions_come_with_their_live_leases() {
    for (_scratch, store) in backends().await {
        store.create_topic("b", 2, &BTreeMap::new()).await.unwrap();
        store.create_topic("a", 1, &BTreeMap::new()).await.unwrap();
        let ttl = Duration::from_secs(30);
        let lease = store
            .acquire_lease(&TopicPartition::new("b", 1), &agent("x"), ttl)
            .await
            .unwrap()
            .unwrap();
        store
            .acquire_lease(
                &TopicPartition::new("a", 0),
                &agent("y"),
                Duration::from_millis(1),
            )
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let all = store.list_all_partitions().await.unwrap();
        let seen: Vec<(String, i32, Option<String>)> = all
            .iter()
            .map(|p| {
                let holder = p.lease.as_ref().map(|l| l.holder.0.clone());
                (p.tp.topic.clone(), p.tp.partition.0, holder)
            })
            .collect();
        // The expired lease on a-0 is not reported; the live one on b-1 is.
        assert_eq!(
            seen,
            [
                ("a".to_string(), 0, None),
                ("b".to_string(), 0, None),
                ("b".to_string(), 1, Some("x".to_string())),
            ]
        );
        assert_eq!(all[2].lease.as_ref().unwrap().epoch, lease.epoch);
        // A deleted topic's lease rows are not reported.
        store.delete_topic("b").await.unwrap();
        assert_eq!(store.list_all_partitions().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn lease_epochs_grow_on_acquire_only() {
    for (_scratch, store) in backends().await {
        store.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("t", 0);
        let ttl = Duration::from_secs(30);
        let (a, b) = (agent("a"), agent("b"));
        let l1 = store.acquire_lease(&tp, &a, ttl).await.unwrap().unwrap();
        assert_eq!(l1.epoch, LeaseEpoch(1));
        // Held by a: b cannot take it.
        assert!(store.acquire_lease(&tp, &b, ttl).await.unwrap().is_none());
        // Renewal keeps the epoch.
        let r = store
            .renew_lease(&tp, &a, l1.epoch, ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.epoch, l1.epoch);
        assert!(r.expires_at_ms >= l1.expires_at_ms);
        // Release, then b acquires with a new epoch; a's renewal now fails.
        store.release_lease(&tp, &a, l1.epoch).await.unwrap();
        let l2 = store.acquire_lease(&tp, &b, ttl).await.unwrap().unwrap();
        assert_eq!(l2.epoch, LeaseEpoch(2));
        assert!(store
            .renew_lease(&tp, &a, l1.epoch, ttl)
            .await
            .unwrap()
            .is_none());
        let p = store.get_partition(&tp).await.unwrap().unwrap();
        assert_eq!(p.lease.unwrap().holder, b);
        // An expired lease can be taken over.
        store
            .renew_lease(&tp, &b, l2.epoch, Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let l3 = store.acquire_lease(&tp, &a, ttl).await.unwrap().unwrap();
        assert_eq!(l3.epoch, LeaseEpoch(3));
        // Unknown partitions have no lease.
        assert!(store
            .acquire_lease(&TopicPartition::new("t", 9), &a, ttl)
            .await
            .is_err());
    }
}

#[tokio::test]
async fn commits_are_fenced_by_epoch_and_high_watermark() {
    for (_scratch, store) in backends().await {
        store.create_topic("t", 2, &BTreeMap::new()).await.unwrap();
        let (p0, p1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let ttl = Duration::from_secs(30);
        let (a, b) = (agent("a"), agent("b"));
        let l0 = store.acquire_lease(&p0, &a, ttl).await.unwrap().unwrap();
        let l1 = store.acquire_lease(&p1, &a, ttl).await.unwrap().unwrap();

        // One commit, two partitions.
        let res = store
            .commit(
                &object("o1", &a),
                &[
                    commit_for(&a, l0.epoch, &p0, 0, 5, "o1"),
                    commit_for(&a, l1.epoch, &p1, 0, 3, "o1"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(res, vec![Ok(()), Ok(())]);
        assert_eq!(
            store
                .get_partition(&p0)
                .await
                .unwrap()
                .unwrap()
                .high_watermark,
            Offset(5)
        );

        // A stale expected high watermark is refused and changes nothing.
        let res = store
            .commit(
                &object("o2", &a),
                &[commit_for(&a, l0.epoch, &p0, 3, 9, "o2")],
            )
            .await
            .unwrap();
        assert!(matches!(
            res[0],
            Err(CommitRejection::OffsetMismatch { .. })
        ));

        // b takes p1 over (after a releases); a's commit with the old epoch is fenced, while
        // its p0 share in the same commit still lands.
        store.release_lease(&p1, &a, l1.epoch).await.unwrap();
        let lb = store.acquire_lease(&p1, &b, ttl).await.unwrap().unwrap();
        let res = store
            .commit(
                &object("o3", &a),
                &[
                    commit_for(&a, l0.epoch, &p0, 5, 7, "o3"),
                    commit_for(&a, l1.epoch, &p1, 3, 4, "o3"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(res[0], Ok(()));
        assert!(matches!(res[1], Err(CommitRejection::Fenced { .. })));
        assert_eq!(
            store
                .get_partition(&p1)
                .await
                .unwrap()
                .unwrap()
                .high_watermark,
            Offset(3)
        );
        let res = store
            .commit(
                &object("o4", &b),
                &[commit_for(&b, lb.epoch, &p1, 3, 4, "o4")],
            )
            .await
            .unwrap();
        assert_eq!(res, vec![Ok(())]);

        // The index answers by offset and by time.
        let entries = store.find_entries(&p0, Offset(0), 10).await.unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.base_offset.0, e.end_offset.0))
                .collect::<Vec<_>>(),
            vec![(0, 5), (5, 7)]
        );
        let entries = store.find_entries(&p0, Offset(5), 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].object_key, "o3");
        assert!(store
            .find_entries(&p0, Offset(7), 10)
            .await
            .unwrap()
            .is_empty());
        let by_time = store
            .find_entry_by_timestamp(&p0, 1006)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_time.base_offset, Offset(5));
        assert!(store
            .find_entry_by_timestamp(&p0, 5000)
            .await
            .unwrap()
            .is_none());
    }
}

#[tokio::test]
async fn a_recreated_topic_continues_lease_epochs() {
    for (_scratch, store) in backends().await {
        let tp = TopicPartition::new("t", 0);
        let a = agent("a");
        let ttl = Duration::from_secs(30);
        store.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        let old = store.acquire_lease(&tp, &a, ttl).await.unwrap().unwrap();
        store.delete_topic("t").await.unwrap();
        store.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        let new = store.acquire_lease(&tp, &a, ttl).await.unwrap().unwrap();
        assert!(new.epoch > old.epoch);
        let res = store
            .commit(
                &object("o", &a),
                &[commit_for(&a, old.epoch, &tp, 0, 1, "o")],
            )
            .await
            .unwrap();
        assert!(matches!(res[0], Err(CommitRejection::Fenced { .. })));
    }
}

#[tokio::test]
async fn group_offsets_are_stored_replaced_and_deleted() {
    for (_scratch, store) in backends().await {
        let offset = |topic: &str, p: i32, o: i64, meta: Option<&str>| GroupOffset {
            tp: TopicPartition::new(topic, p),
            offset: Offset(o),
            leader_epoch: 3,
            metadata: meta.map(str::to_string),
            commit_timestamp_ms: 0,
        };
        assert!(store.fetch_group_offsets("g").await.unwrap().is_empty());
        store
            .commit_group_offsets(
                "g",
                &[offset("t", 0, 5, Some("m")), offset("t", 1, 7, None)],
            )
            .await
            .unwrap();
        store
            .commit_group_offsets("g", &[offset("t", 0, 9, None)])
            .await
            .unwrap();
        store
            .commit_group_offsets("other", &[offset("u", 0, 1, None)])
            .await
            .unwrap();
        let got = store.fetch_group_offsets("g").await.unwrap();
        assert_eq!(
            got.iter()
                .map(|o| (o.tp.partition.0, o.offset.0, o.metadata.clone()))
                .collect::<Vec<_>>(),
            vec![(0, 9, None), (1, 7, None)]
        );
        assert!(got
            .iter()
            .all(|o| o.leader_epoch == 3 && o.commit_timestamp_ms > 0));
        assert_eq!(
            store.list_offset_groups().await.unwrap(),
            vec!["g".to_string(), "other".to_string()]
        );
        assert!(store.delete_group_offsets("g").await.unwrap());
        assert!(!store.delete_group_offsets("g").await.unwrap());
        assert!(store.fetch_group_offsets("g").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn producer_ids_are_unique_and_epochs_only_grow() {
    for (_scratch, store) in backends().await {
        let a = store.allocate_producer_id().await.unwrap();
        let b = store.allocate_producer_id().await.unwrap();
        assert_ne!(a, b);
        assert!(a.0 >= 0 && b.0 >= 0);
        assert_eq!(
            store
                .bump_producer_epoch(a, ProducerEpoch(0))
                .await
                .unwrap(),
            EpochBump::Bumped(ProducerEpoch(1))
        );
        // An incarnation still at epoch 0 is fenced; one that bumped locally is accepted.
        assert_eq!(
            store
                .bump_producer_epoch(a, ProducerEpoch(0))
                .await
                .unwrap(),
            EpochBump::Fenced {
                current: ProducerEpoch(1)
            }
        );
        assert_eq!(
            store
                .bump_producer_epoch(a, ProducerEpoch(5))
                .await
                .unwrap(),
            EpochBump::Bumped(ProducerEpoch(6))
        );
        assert_eq!(
            store
                .bump_producer_epoch(a, ProducerEpoch(i16::MAX - 1))
                .await
                .unwrap(),
            EpochBump::Exhausted
        );
        assert_eq!(
            store
                .bump_producer_epoch(ProducerId(9_999), ProducerEpoch(0))
                .await
                .unwrap(),
            EpochBump::Unknown
        );
        // b was untouched.
        assert_eq!(
            store
                .bump_producer_epoch(b, ProducerEpoch(0))
                .await
                .unwrap(),
            EpochBump::Bumped(ProducerEpoch(1))
        );
    }
}

#[tokio::test]
async fn producer_ids_stay_unique_across_reopening() {
    for (_scratch, url) in backend_urls().await {
        let first = open(&url)
            .await
            .unwrap()
            .allocate_producer_id()
            .await
            .unwrap();
        let second = open(&url)
            .await
            .unwrap()
            .allocate_producer_id()
            .await
            .unwrap();
        assert!(second > first, "{second} after {first}");
    }
}

#[tokio::test]
async fn producer_states_commit_with_the_data_and_only_with_it() {
    for (_scratch, store) in backends().await {
        store.create_topic("t", 2, &BTreeMap::new()).await.unwrap();
        let holder = agent("a");
        let tp = TopicPartition::new("t", 0);
        let tp1 = TopicPartition::new("t", 1);
        let e0 = store
            .acquire_lease(&tp, &holder, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap()
            .epoch;
        let e1 = store
            .acquire_lease(&tp1, &holder, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap()
            .epoch;
        let state = |id: i64, last: i32, batches: &[(i32, i32, i64)]| ProducerState {
            producer_id: ProducerId(id),
            producer_epoch: ProducerEpoch(2),
            last_sequence: last,
            batches: batches
                .iter()
                .map(|(first, last, base)| ProducerBatch {
                    first_sequence: *first,
                    last_sequence: *last,
                    base_offset: Offset(*base),
                })
                .collect(),
        };
        let mut c = commit_for(&holder, e0, &tp, 0, 3, "o1");
        c.producers = vec![state(7, 2, &[(0, 2, 0)])];
        let res = store.commit(&object("o1", &holder), &[c]).await.unwrap();
        assert!(res[0].is_ok());
        assert_eq!(
            store.load_producer_states(&tp).await.unwrap(),
            vec![state(7, 2, &[(0, 2, 0)])]
        );
        assert!(store.load_producer_states(&tp1).await.unwrap().is_empty());

        // A refused partition stores nothing of its producers; the accepted one replaces
        // the producer's row and its batches.
        let mut refused = commit_for(&holder, e1, &tp1, 5, 6, "o2");
        refused.producers = vec![state(7, 0, &[(0, 0, 5)])];
        let mut accepted = commit_for(&holder, e0, &tp, 3, 5, "o2");
        accepted.producers = vec![
            state(7, 4, &[(0, 2, 0), (3, 4, 3)]),
            state(8, 0, &[(0, 0, 4)]),
        ];
        let res = store
            .commit(&object("o2", &holder), &[refused, accepted])
            .await
            .unwrap();
        assert!(res[0].is_err());
        assert!(res[1].is_ok());
        assert_eq!(
            store.load_producer_states(&tp).await.unwrap(),
            vec![
                state(7, 4, &[(0, 2, 0), (3, 4, 3)]),
                state(8, 0, &[(0, 0, 4)])
            ]
        );
        assert!(store.load_producer_states(&tp1).await.unwrap().is_empty());

        // More batches than are kept is refused.
        let mut too_many = commit_for(&holder, e0, &tp, 5, 6, "o3");
        too_many.producers = vec![state(
            9,
            5,
            &[
                (0, 0, 0),
                (1, 1, 1),
                (2, 2, 2),
                (3, 3, 3),
                (4, 4, 4),
                (5, 5, 5),
            ],
        )];
        assert!(store
            .commit(&object("o3", &holder), &[too_many])
            .await
            .is_err());
        assert_eq!(
            store
                .get_partition(&tp)
                .await
                .unwrap()
                .unwrap()
                .high_watermark,
            Offset(5)
        );

        // Deleting the topic forgets its producers.
        store.delete_topic("t").await.unwrap();
        store.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        assert!(store.load_producer_states(&tp).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn topics_can_be_reconfigured_grown_and_trimmed() {
    for (_scratch, store) in backends().await {
        store.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        store.set_topic_configs("t", &configs).await.unwrap();
        assert_eq!(
            store.get_topic("t").await.unwrap().unwrap().configs,
            configs
        );
        assert!(matches!(
            store.set_topic_configs("none", &configs).await,
            Err(MetadataError::NotFound { .. })
        ));

        store.add_partitions("t", 3).await.unwrap();
        assert_eq!(store.get_topic("t").await.unwrap().unwrap().partitions, 3);
        assert_eq!(store.list_partitions("t").await.unwrap().len(), 3);
        assert!(matches!(
            store.add_partitions("t", 3).await,
            Err(MetadataError::Invalid { .. })
        ));

        let tp = TopicPartition::new("t", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        store
            .commit(
                &object("o", &a),
                &[commit_for(&a, lease.epoch, &tp, 0, 10, "o")],
            )
            .await
            .unwrap();
        assert_eq!(
            store.advance_log_start(&tp, Offset(4)).await.unwrap(),
            Offset(4)
        );
        // Never backwards, never past the high watermark.
        assert_eq!(
            store.advance_log_start(&tp, Offset(2)).await.unwrap(),
            Offset(4)
        );
        assert!(store.advance_log_start(&tp, Offset(11)).await.is_err());
        let p = store.get_partition(&tp).await.unwrap().unwrap();
        assert_eq!(
            (p.log_start_offset, p.high_watermark),
            (Offset(4), Offset(10))
        );
        // Stored bytes: the entries that still hold readable offsets.
        assert_eq!(store.partition_sizes().await.unwrap(), [(tp.clone(), 10)]);
        store
            .commit(
                &object("o2", &a),
                &[commit_for(&a, lease.epoch, &tp, 10, 12, "o2")],
            )
            .await
            .unwrap();
        assert_eq!(store.partition_sizes().await.unwrap(), [(tp.clone(), 20)]);
        store.advance_log_start(&tp, Offset(10)).await.unwrap();
        assert_eq!(store.partition_sizes().await.unwrap(), [(tp.clone(), 10)]);
    }
}

#[tokio::test]
async fn epoch_end_offsets_follow_the_lease_epochs_of_commits() {
    for (_scratch, store) in backends().await {
        store.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("t", 0);
        let (a, b) = (agent("a"), agent("b"));
        let ttl = Duration::from_secs(30);
        assert_eq!(
            store.epoch_end_offset(&tp, LeaseEpoch(1)).await.unwrap(),
            None
        );
        // Epoch 1 (a) writes 0..5, epoch 2 (b) writes 5..8, epoch 3 (a) writes nothing.
        let l1 = store.acquire_lease(&tp, &a, ttl).await.unwrap().unwrap();
        store
            .commit(
                &object("o1", &a),
                &[commit_for(&a, l1.epoch, &tp, 0, 5, "o1")],
            )
            .await
            .unwrap();
        store.release_lease(&tp, &a, l1.epoch).await.unwrap();
        let l2 = store.acquire_lease(&tp, &b, ttl).await.unwrap().unwrap();
        store
            .commit(
                &object("o2", &b),
                &[commit_for(&b, l2.epoch, &tp, 5, 8, "o2")],
            )
            .await
            .unwrap();
        store.release_lease(&tp, &b, l2.epoch).await.unwrap();
        store.acquire_lease(&tp, &a, ttl).await.unwrap().unwrap();
        assert_eq!(
            store.epoch_end_offset(&tp, LeaseEpoch(1)).await.unwrap(),
            Some((LeaseEpoch(1), Offset(5)))
        );
        assert_eq!(
            store.epoch_end_offset(&tp, LeaseEpoch(2)).await.unwrap(),
            Some((LeaseEpoch(2), Offset(8)))
        );
        // Epoch 3 wrote nothing: the largest epoch at or below it is 2, ending at the high
        // watermark.
        assert_eq!(
            store.epoch_end_offset(&tp, LeaseEpoch(3)).await.unwrap(),
            Some((LeaseEpoch(2), Offset(8)))
        );
        assert_eq!(
            store.epoch_end_offset(&tp, LeaseEpoch(0)).await.unwrap(),
            Some((LeaseEpoch(0), Offset(0)))
        );
    }
}

/// Two agents (two stores on the same database) commit to the same partitions at the same
/// expected high watermark at the same moment, listing the partitions in opposite orders:
/// exactly one commit lands, the other is refused partition by partition (not failed, e.g. by
/// a deadlock or a duplicate key), and the index still tiles the offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commits_at_one_high_watermark_admit_exactly_one() {
    for (_scratch, url) in backend_urls().await {
        let first = open(&url).await.unwrap();
        let second = open(&url).await.unwrap();
        first.create_topic("t", 2, &BTreeMap::new()).await.unwrap();
        let (p0, p1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        // The same holder and epoch on both sides (a leader and its own zombie retry): only
        // the high watermark check can keep them apart.
        let a = agent("a");
        let ttl = Duration::from_secs(60);
        let e0 = first
            .acquire_lease(&p0, &a, ttl)
            .await
            .unwrap()
            .unwrap()
            .epoch;
        let e1 = first
            .acquire_lease(&p1, &a, ttl)
            .await
            .unwrap()
            .unwrap()
            .epoch;
        let rounds = 20;
        for round in 0..rounds {
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let mut tasks = Vec::new();
            for (side, store) in [(0, first.clone()), (1, second.clone())] {
                let key = format!("r{round}-{side}");
                let mut shares = vec![
                    commit_for(&a, e0, &p0, round, round + 1, &key),
                    commit_for(&a, e1, &p1, round, round + 1, &key),
                ];
                if side == 1 {
                    shares.reverse();
                }
                let (barrier, a) = (barrier.clone(), a.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    store.commit(&object(&key, &a), &shares).await
                }));
            }
            let mut winners = 0;
            for task in tasks {
                let res = task
                    .await
                    .unwrap()
                    .expect("a refused commit is not an error");
                if res.iter().all(Result::is_ok) {
                    winners += 1;
                } else {
                    assert!(
                        res.iter()
                            .all(|r| matches!(r, Err(CommitRejection::OffsetMismatch { .. }))),
                        "round {round}: {res:?}"
                    );
                }
            }
            assert_eq!(winners, 1, "round {round}");
        }
        for tp in [&p0, &p1] {
            let p = first.get_partition(tp).await.unwrap().unwrap();
            assert_eq!(p.high_watermark, Offset(rounds));
            let entries = first.find_entries(tp, Offset(0), 100).await.unwrap();
            let ranges: Vec<_> = entries
                .iter()
                .map(|e| (e.base_offset.0, e.end_offset.0))
                .collect();
            assert_eq!(ranges, (0..rounds).map(|r| (r, r + 1)).collect::<Vec<_>>());
        }
    }
}

/// Agents racing for the same free lease: exactly one gets it, the others get `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_lease_acquisitions_admit_exactly_one() {
    for (_scratch, url) in backend_urls().await {
        let stores = [open(&url).await.unwrap(), open(&url).await.unwrap()];
        stores[0]
            .create_topic("t", 8, &BTreeMap::new())
            .await
            .unwrap();
        for p in 0..8 {
            let tp = TopicPartition::new("t", p);
            let barrier = Arc::new(tokio::sync::Barrier::new(4));
            let mut tasks = Vec::new();
            for i in 0..4 {
                let (store, tp, barrier) = (stores[i % 2].clone(), tp.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .acquire_lease(&tp, &agent(&format!("agent-{i}")), Duration::from_secs(60))
                        .await
                }));
            }
            let mut leases = Vec::new();
            for task in tasks {
                if let Some(lease) = task.await.unwrap().unwrap() {
                    leases.push(lease);
                }
            }
            assert_eq!(leases.len(), 1, "partition {p}: {leases:?}");
            assert_eq!(leases[0].epoch, LeaseEpoch(1));
        }
    }
}

/// Concurrent producer id allocations and agent registrations from two stores never hand
/// out the same id twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_hand_out_distinct_ids() {
    for (_scratch, url) in backend_urls().await {
        let stores = [open(&url).await.unwrap(), open(&url).await.unwrap()];
        let mut tasks = Vec::new();
        for i in 0..6 {
            let store = stores[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..10 {
                    ids.push(store.allocate_producer_id().await.unwrap().0);
                }
                let info = store
                    .register_agent(&AgentRegistration {
                        id: agent(&format!("agent-{i}")),
                        advertised_addr: format!("h:{i}"),
                        group: "default".to_string(),
                    })
                    .await
                    .unwrap();
                (ids, info.node_id)
            }));
        }
        let mut ids = Vec::new();
        let mut node_ids = Vec::new();
        for task in tasks {
            let (mut some, node_id) = task.await.unwrap();
            ids.append(&mut some);
            node_ids.push(node_id);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 60);
        node_ids.sort_unstable();
        node_ids.dedup();
        assert_eq!(node_ids.len(), 6);
    }
}

/// The PostgreSQL pool replaces connections the server dropped (restart, failover, an
/// administrator's pg_terminate_backend): the next call succeeds.
#[tokio::test]
async fn a_postgres_store_survives_dropped_connections() {
    let (schema, url) = postgres_schema("").await;
    let app = schema.name.clone();
    let store = open(&url).await.unwrap();
    store.create_topic("t", 1, &BTreeMap::new()).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&postgres_server_url())
        .await
        .unwrap();
    for _ in 0..3 {
        store.ping().await.unwrap();
        // Wait (up to 5 s) for each backend to be gone, so the store meets dead connections.
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!terminated.is_empty() && terminated.iter().all(|t| *t));
        let topic = store.get_topic("t").await.unwrap().unwrap();
        assert_eq!(topic.partitions, 1);
    }
}

/// Pool settings in the URL are accepted; a nonsensical one is refused by name.
#[tokio::test]
async fn postgres_url_settings_are_checked() {
    let (_schema, url) =
        postgres_schema("&max_connections=2&statement_timeout_ms=5000&acquire_timeout_ms=5000")
            .await;
    open(&url).await.unwrap().ping().await.unwrap();
    let (_schema, url) = postgres_schema("&max_connections=0").await;
    assert!(matches!(
        open(&url).await,
        Err(MetadataError::Invalid { .. })
    ));
}

#[tokio::test]
async fn retained_bytes_start_counts_whole_readable_entries_from_the_newest() {
    for (_scratch, store) in backends().await {
        store.create_topic("r", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("r", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        // Three entries of 10 bytes each: [0, 10), [10, 12), [12, 20).
        for (i, (base, end)) in [(0, 10), (10, 12), (12, 20)].into_iter().enumerate() {
            let key = format!("o{i}");
            store
                .commit(
                    &object(&key, &a),
                    &[commit_for(&a, lease.epoch, &tp, base, end, &key)],
                )
                .await
                .unwrap();
        }
        let start = |max| {
            let store = store.clone();
            let tp = tp.clone();
            async move { store.start_for_retained_bytes(&tp, max).await.unwrap() }
        };
        assert_eq!(start(30).await, None, "all three fit");
        assert_eq!(start(25).await, Some(Offset(10)), "the oldest goes");
        assert_eq!(start(15).await, Some(Offset(12)));
        assert_eq!(
            start(5).await,
            Some(Offset(20)),
            "even the newest is too big"
        );
        // Entries below the log start no longer count.
        store.advance_log_start(&tp, Offset(10)).await.unwrap();
        assert_eq!(start(25).await, None);
        let empty = TopicPartition::new("r", 0);
        store.delete_topic("r").await.unwrap();
        assert_eq!(
            store.start_for_retained_bytes(&empty, 0).await.unwrap(),
            None
        );
    }
}

/// Commits `ranges` of `tp` as one entry each, in objects `o0`, `o1`, … (10 bytes each).
async fn commit_entries(
    store: &Arc<dyn MetadataStore>,
    tp: &TopicPartition,
    holder: &AgentId,
    epoch: LeaseEpoch,
    ranges: &[(i64, i64)],
) {
    for (i, (base, end)) in ranges.iter().enumerate() {
        let key = format!("o{i}");
        let results = store
            .commit(
                &object(&key, holder),
                &[commit_for(holder, epoch, tp, *base, *end, &key)],
            )
            .await
            .unwrap();
        assert_eq!(results, vec![Ok(())]);
    }
}

/// The new entries of a swap: `ranges` in object `key`, 10 bytes each, laid end to end.
fn swapped(
    tp: &TopicPartition,
    key: &str,
    epoch: LeaseEpoch,
    ranges: &[(i64, i64)],
) -> Vec<StoredEntry> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, (base, end))| StoredEntry {
            entry: IndexEntry {
                tp: tp.clone(),
                base_offset: Offset(*base),
                end_offset: Offset(*end),
                object_key: key.to_string(),
                byte_start: 10 * i as u64,
                byte_len: 10,
                max_timestamp: 1000 + end,
            },
            leader_epoch: epoch,
            committed_at_ms: 0,
            object_bytes: 0,
        })
        .collect()
}

/// A swap whose range starts inside an entry (one reaching into it from before) is refused,
/// even when the entries starting in the range are as many as it names, and its objects.
#[tokio::test]
async fn a_swap_is_refused_when_an_earlier_entry_reaches_into_its_range() {
    for (_scratch, store) in backends().await {
        store.create_topic("r", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("r", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        commit_entries(&store, &tp, &a, lease.epoch, &[(0, 6), (6, 8), (8, 10)]).await;
        let entries = store.find_entries(&tp, Offset(0), 100).await.unwrap();
        let old = vec![
            IndexEntry {
                base_offset: Offset(3),
                ..entries[1].clone()
            },
            entries[2].clone(),
        ];
        let new = swapped(&tp, "s1", lease.epoch, &[(3, 10)]);
        assert_eq!(
            store
                .replace_entries(&object("s1", &a), &old, &new)
                .await
                .unwrap(),
            Swap::Changed
        );
        assert_eq!(
            store.find_entries(&tp, Offset(0), 100).await.unwrap(),
            entries
        );
    }
}

#[tokio::test]
async fn compaction_swaps_entries_only_when_nothing_changed_underneath() {
    for (_scratch, store) in backends().await {
        store.create_topic("c", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("c", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        commit_entries(
            &store,
            &tp,
            &a,
            lease.epoch,
            &[(0, 3), (3, 5), (5, 9), (9, 10)],
        )
        .await;
        let stored = store
            .find_stored_entries(&tp, Offset(0), 100)
            .await
            .unwrap();
        assert_eq!(stored.len(), 4);
        assert!(stored.iter().all(|s| s.leader_epoch == lease.epoch
            && s.committed_at_ms > 0
            && s.object_bytes == 10));
        let old: Vec<IndexEntry> = stored[..3].iter().map(|s| s.entry.clone()).collect();

        // Malformed swaps are refused before anything is read.
        for bad in [
            swapped(&tp, "c1", lease.epoch, &[(0, 5)]), // stops short
            swapped(&tp, "c1", lease.epoch, &[(0, 4), (5, 9)]), // a gap
            swapped(&tp, "c1", lease.epoch, &[(1, 9)]), // starts late
        ] {
            let err = store
                .replace_entries(&object("c1", &a), &old, &bad)
                .await
                .unwrap_err();
            assert!(matches!(err, MetadataError::Invalid { .. }), "{err:?}");
        }
        let other_object = swapped(&tp, "elsewhere", lease.epoch, &[(0, 9)]);
        assert!(store
            .replace_entries(&object("c1", &a), &old, &other_object)
            .await
            .is_err());

        let new = swapped(&tp, "c1", lease.epoch, &[(0, 5), (5, 9)]);
        assert_eq!(
            store
                .replace_entries(&object("c1", &a), &old, &new)
                .await
                .unwrap(),
            Swap::Replaced
        );
        let entries = store.find_entries(&tp, Offset(0), 100).await.unwrap();
        let keys: Vec<(i64, i64, &str)> = entries
            .iter()
            .map(|e| (e.base_offset.0, e.end_offset.0, e.object_key.as_str()))
            .collect();
        assert_eq!(keys, vec![(0, 5, "c1"), (5, 9, "c1"), (9, 10, "o3")]);
        // Reads at any offset land in the entry holding it.
        let at = store.find_entries(&tp, Offset(6), 1).await.unwrap();
        assert_eq!(at[0].base_offset, Offset(5));
        // The epochs are kept.
        assert_eq!(
            store.epoch_end_offset(&tp, lease.epoch).await.unwrap(),
            Some((lease.epoch, Offset(10)))
        );

        // The same swap again: the old entries are gone, nothing changes.
        let again = swapped(&tp, "c2", lease.epoch, &[(0, 9)]);
        assert_eq!(
            store
                .replace_entries(&object("c2", &a), &old, &again)
                .await
                .unwrap(),
            Swap::Changed
        );
        // As many entries over the same offsets, but naming other objects: a change too.
        let stale: Vec<IndexEntry> = entries[..2]
            .iter()
            .map(|e| IndexEntry {
                object_key: "o1".into(),
                ..e.clone()
            })
            .collect();
        assert_eq!(
            store
                .replace_entries(
                    &object("c5", &a),
                    &stale,
                    &swapped(&tp, "c5", lease.epoch, &[(0, 9)])
                )
                .await
                .unwrap(),
            Swap::Changed
        );
        // An object key already recorded fails the whole swap.
        let c1_rows: Vec<IndexEntry> = entries[..2].to_vec();
        let reuse = swapped(&tp, "o3", lease.epoch, &[(0, 9)]);
        assert!(store
            .replace_entries(&object("o3", &a), &c1_rows, &reuse)
            .await
            .is_err());
        assert_eq!(
            store.find_entries(&tp, Offset(0), 100).await.unwrap(),
            entries
        );

        // A log start moved into the range removes what it passed: the swap sees a change.
        store.advance_log_start(&tp, Offset(4)).await.unwrap();
        let after = store.find_entries(&tp, Offset(0), 100).await.unwrap();
        assert_eq!(after, entries, "no entry ends at or below 4");
        store.advance_log_start(&tp, Offset(9)).await.unwrap();
        let after = store.find_entries(&tp, Offset(0), 100).await.unwrap();
        assert_eq!(
            after,
            entries[2..].to_vec(),
            "entries ending at or below 9 are deleted"
        );
        assert_eq!(
            store
                .replace_entries(
                    &object("c3", &a),
                    &c1_rows,
                    &swapped(&tp, "c3", lease.epoch, &[(0, 9)])
                )
                .await
                .unwrap(),
            Swap::Changed
        );
        // Swaps on a deleted topic change nothing.
        store.delete_topic("c").await.unwrap();
        let last = after.clone();
        assert_eq!(
            store
                .replace_entries(
                    &object("c4", &a),
                    &last,
                    &swapped(&tp, "c4", lease.epoch, &[(9, 10)])
                )
                .await
                .unwrap(),
            Swap::Changed
        );
    }
}

#[tokio::test]
async fn unreferenced_objects_are_handed_out_after_the_grace_period_then_forgotten() {
    for (_scratch, store) in backends().await {
        store.create_topic("g", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("g", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        commit_entries(&store, &tp, &a, lease.epoch, &[(0, 3), (3, 5), (5, 9)]).await;
        let hour = Duration::from_secs(3600);
        assert!(store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());

        let old: Vec<IndexEntry> = store.find_entries(&tp, Offset(0), 2).await.unwrap();
        let new = swapped(&tp, "c", lease.epoch, &[(0, 5)]);
        store
            .replace_entries(&object("c", &a), &old, &new)
            .await
            .unwrap();
        // Marked now, but not handed out within the grace period.
        assert!(store
            .unreferenced_objects(hour, 10)
            .await
            .unwrap()
            .is_empty());
        let mut due = store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap();
        due.sort();
        assert_eq!(due, vec!["o0".to_string(), "o1".to_string()]);
        assert_eq!(
            store
                .unreferenced_objects(Duration::ZERO, 1)
                .await
                .unwrap()
                .len(),
            1
        );

        // Forgetting leaves named objects alone.
        store
            .forget_objects(&["o0".into(), "o1".into(), "o2".into(), "c".into()])
            .await
            .unwrap();
        assert!(store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.find_entries(&tp, Offset(0), 10).await.unwrap().len(),
            2
        );

        // Retention unnames objects by moving the log start.
        store.advance_log_start(&tp, Offset(9)).await.unwrap();
        let mut due = store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap();
        due.sort();
        assert_eq!(due, vec!["c".to_string(), "o2".to_string()]);
        // So does deleting the topic.
        store.create_topic("h", 1, &BTreeMap::new()).await.unwrap();
        let th = TopicPartition::new("h", 0);
        let lh = store
            .acquire_lease(&th, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        store
            .commit(
                &object("h0", &a),
                &[commit_for(&a, lh.epoch, &th, 0, 4, "h0")],
            )
            .await
            .unwrap();
        store.delete_topic("h").await.unwrap();
        let due = store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap();
        assert!(due.contains(&"h0".to_string()), "{due:?}");
    }
}

#[tokio::test]
async fn orphan_tombstones_refuse_a_late_commit_of_their_key() {
    for (_scratch, store) in backends().await {
        store.create_topic("o", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("o", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        commit_entries(&store, &tp, &a, lease.epoch, &[(0, 3)]).await;
        let gc = agent("gc");
        // A committed key is not an orphan; an unknown one is.
        let orphans = store
            .claim_orphans(&["o0".into(), "late".into()], &gc)
            .await
            .unwrap();
        assert_eq!(orphans, vec!["late".to_string()]);
        // Still an orphan when found again (its delete may have failed).
        assert_eq!(
            store.claim_orphans(&["late".into()], &gc).await.unwrap(),
            vec!["late".to_string()]
        );
        // The writer of "late" commits after all: refused as a whole, nothing moves.
        let late = store
            .commit(
                &object("late", &a),
                &[commit_for(&a, lease.epoch, &tp, 3, 5, "late")],
            )
            .await;
        assert!(late.is_err(), "{late:?}");
        assert_eq!(
            store
                .get_partition(&tp)
                .await
                .unwrap()
                .unwrap()
                .high_watermark,
            Offset(3)
        );
        assert_eq!(
            store.find_entries(&tp, Offset(0), 10).await.unwrap().len(),
            1
        );
        // Tombstones are not garbage to hand out again.
        assert!(store
            .unreferenced_objects(Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());
        store.forget_objects(&["late".into()]).await.unwrap();
        assert_eq!(
            store.claim_orphans(&["late".into()], &gc).await.unwrap(),
            vec!["late".to_string()]
        );
        // Nor can a compaction swap name it.
        let old = store.find_entries(&tp, Offset(0), 10).await.unwrap();
        let new = swapped(&tp, "late", lease.epoch, &[(0, 3)]);
        assert!(store
            .replace_entries(&object("late", &a), &old, &new)
            .await
            .is_err());
    }
}

#[tokio::test]
async fn maintenance_jobs_have_one_holder_until_it_lapses() {
    for (_scratch, store) in backends().await {
        let (a, b) = (agent("a"), agent("b"));
        let ttl = Duration::from_secs(30);
        assert!(store.claim_job("gc", &a, ttl).await.unwrap());
        assert!(!store.claim_job("gc", &b, ttl).await.unwrap());
        assert!(
            store.claim_job("gc", &a, ttl).await.unwrap(),
            "the holder extends it"
        );
        assert!(
            store.claim_job("other", &b, ttl).await.unwrap(),
            "jobs are separate"
        );
        // a's claim lapses at once.
        assert!(store.claim_job("gc", &a, Duration::ZERO).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(store.claim_job("gc", &b, ttl).await.unwrap());
        assert!(!store.claim_job("gc", &a, ttl).await.unwrap());
    }
}

#[tokio::test]
async fn the_log_compaction_checkpoint_only_moves_forward_up_to_the_high_watermark() {
    for (_scratch, store) in backends().await {
        store.create_topic("lc", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("lc", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.clean_offset(&tp).await.unwrap(), Offset(0));
        commit_entries(&store, &tp, &a, lease.epoch, &[(0, 10), (10, 20)]).await;
        assert_eq!(
            store.advance_clean_offset(&tp, Offset(10)).await.unwrap(),
            Offset(10)
        );
        assert_eq!(
            store.advance_clean_offset(&tp, Offset(5)).await.unwrap(),
            Offset(10),
            "never back"
        );
        assert_eq!(
            store.advance_clean_offset(&tp, Offset(99)).await.unwrap(),
            Offset(20),
            "never past the high watermark"
        );
        assert_eq!(store.clean_offset(&tp).await.unwrap(), Offset(20));
        let missing = TopicPartition::new("lc", 1);
        assert!(matches!(
            store.clean_offset(&missing).await,
            Err(MetadataError::NotFound { .. })
        ));
        assert!(matches!(
            store.advance_clean_offset(&missing, Offset(1)).await,
            Err(MetadataError::NotFound { .. })
        ));
        // A topic created again under the name starts over.
        store.delete_topic("lc").await.unwrap();
        store.create_topic("lc", 1, &BTreeMap::new()).await.unwrap();
        assert_eq!(store.clean_offset(&tp).await.unwrap(), Offset(0));
    }
}

#[tokio::test]
async fn a_swap_may_leave_offsets_with_no_bytes_left() {
    // Log compaction can remove every record of a range: its entry keeps the offsets, with
    // no bytes, so the entries still tile the log.
    for (_scratch, store) in backends().await {
        store.create_topic("z", 1, &BTreeMap::new()).await.unwrap();
        let tp = TopicPartition::new("z", 0);
        let a = agent("a");
        let lease = store
            .acquire_lease(&tp, &a, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        commit_entries(&store, &tp, &a, lease.epoch, &[(0, 10), (10, 20), (20, 30)]).await;
        let old = store.find_entries(&tp, Offset(0), 2).await.unwrap();
        let mut new = swapped(&tp, "c0", lease.epoch, &[(0, 20)]);
        new[0].entry.byte_len = 0;
        let swap = store
            .replace_entries(&object("c0", &a), &old, &new)
            .await
            .unwrap();
        assert_eq!(swap, Swap::Replaced);
        let entries = store.find_entries(&tp, Offset(0), 10).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (
                entries[0].base_offset,
                entries[0].end_offset,
                entries[0].byte_len
            ),
            (Offset(0), Offset(20), 0)
        );
        assert_eq!(entries[1].base_offset, Offset(20));
    }
}
