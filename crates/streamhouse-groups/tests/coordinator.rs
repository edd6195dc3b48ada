//! The group state machine: joins, generations, sync, leave, session expiry, offsets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use streamhouse_groups::*;
use streamhouse_metadata::{GroupOffset, Offset, TopicPartition};
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    coordinator: Arc<GroupCoordinator>,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn fixture(initial_delay_ms: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/metadata.db", dir.path().display());
    let metadata = streamhouse_metadata::open(&url).await.unwrap();
    let config = GroupConfig {
        initial_rebalance_delay: Duration::from_millis(initial_delay_ms),
        min_session_timeout: Duration::from_millis(100),
        max_session_timeout: Duration::from_secs(60),
        tick: Duration::from_millis(20),
    };
    let coordinator = GroupCoordinator::new(config, metadata);
    let shutdown = CancellationToken::new();
    tokio::spawn(coordinator.clone().run(shutdown.clone()));
    Fixture {
        _dir: dir,
        coordinator,
        shutdown,
    }
}

fn join_request(member_id: &str, session_ms: i32) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member_id.into(),
        group_instance_id: None,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: session_ms,
        rebalance_timeout_ms: 2000,
        protocol_type: "consumer".into(),
        protocols: vec![
            ("range".into(), Bytes::from_static(b"range-meta")),
            ("roundrobin".into(), Bytes::from_static(b"rr-meta")),
        ],
        require_known_member_id: true,
    }
}

/// First join gets MEMBER_ID_REQUIRED; returns the id to rejoin with.
async fn member_id(c: &GroupCoordinator) -> String {
    match c.join(join_request("", 10_000)).await {
        Err(GroupError::MemberIdRequired { member_id }) => member_id,
        other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
    }
}

fn sync(generation: i32, member: &str, assignments: Vec<(String, Bytes)>) -> SyncRequest {
    SyncRequest {
        group_id: "g".into(),
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: None,
        assignments,
    }
}

#[tokio::test]
async fn two_members_join_one_generation_and_get_the_leaders_assignment() {
    let f = fixture(200).await;
    let c = f.coordinator.clone();
    let (a, b) = (member_id(&c).await, member_id(&c).await);
    assert_ne!(a, b);
    assert!(matches!(
        c.join(join_request("never-issued", 10_000)).await,
        Err(GroupError::UnknownMember { .. })
    ));
    let (ja, jb) = tokio::join!(
        c.join(join_request(&a, 10_000)),
        c.join(join_request(&b, 10_000))
    );
    let (ja, jb) = (ja.unwrap(), jb.unwrap());
    assert_eq!(ja.generation_id, 1);
    assert_eq!(jb.generation_id, 1);
    assert_eq!(ja.leader, jb.leader);
    assert_eq!(ja.protocol_name.as_deref(), Some("range"));
    let (leader, follower) = if ja.leader == a { (ja, jb) } else { (jb, ja) };
    assert_eq!(leader.members.len(), 2, "the leader sees every member");
    assert!(follower.members.is_empty());
    assert!(leader
        .members
        .iter()
        .all(|m| m.metadata == Bytes::from_static(b"range-meta")));

    let follower_sync = {
        let c = c.clone();
        let id = follower.member_id.clone();
        tokio::spawn(async move { c.sync(sync(1, &id, vec![])).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !follower_sync.is_finished(),
        "followers wait for the leader's assignment"
    );
    let assignments = vec![
        (leader.member_id.clone(), Bytes::from_static(b"L")),
        (follower.member_id.clone(), Bytes::from_static(b"F")),
    ];
    let mine = c
        .sync(sync(1, &leader.member_id, assignments))
        .await
        .unwrap();
    assert_eq!(mine, Bytes::from_static(b"L"));
    assert_eq!(
        follower_sync.await.unwrap().unwrap(),
        Bytes::from_static(b"F")
    );
    c.heartbeat("g", 1, &leader.member_id, None).unwrap();
    assert!(matches!(
        c.heartbeat("g", 0, &leader.member_id, None),
        Err(GroupError::IllegalGeneration { .. })
    ));
    let d = c.describe("g").await.unwrap();
    assert_eq!(d.state, "Stable");
    assert_eq!(d.protocol, "range");
    assert_eq!(d.members.len(), 2);
    assert!(d
        .members
        .iter()
        .any(|m| m.assignment == Bytes::from_static(b"F")));
}

#[tokio::test]
async fn a_leaving_member_triggers_a_rebalance_and_the_group_goes_empty_at_the_end() {
    let f = fixture(200).await;
    let c = f.coordinator.clone();
    let (a, b) = (member_id(&c).await, member_id(&c).await);
    let (ja, jb) = tokio::join!(
        c.join(join_request(&a, 10_000)),
        c.join(join_request(&b, 10_000))
    );
    let generation = ja.unwrap().generation_id;
    assert_eq!(jb.unwrap().generation_id, generation);
    let (sa, sb) = tokio::join!(
        c.sync(sync(generation, &a, vec![])),
        c.sync(sync(generation, &b, vec![]))
    );
    // The leader sent no assignment: both get empty ones, and the group is stable.
    assert!(sa.unwrap().is_empty() && sb.unwrap().is_empty());

    assert_eq!(c.leave("g", &[(b.clone(), None)]).len(), 1);
    assert!(matches!(
        c.heartbeat("g", generation, &a, None),
        Err(GroupError::RebalanceInProgress { .. })
    ));
    let rejoined = c.join(join_request(&a, 10_000)).await.unwrap();
    assert_eq!(rejoined.generation_id, generation + 1);
    assert_eq!(rejoined.leader, a);
    assert_eq!(rejoined.members.len(), 1);
    assert!(matches!(
        c.sync(sync(generation, &a, vec![])).await,
        Err(GroupError::IllegalGeneration { .. })
    ));
    c.leave("g", &[(a.clone(), None)]);
    assert_eq!(c.describe("g").await.unwrap().state, "Empty");
    assert!(matches!(
        c.leave("g", &[(a, None)])[0],
        Err(GroupError::UnknownMember { .. })
    ));
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_is_removed() {
    let f = fixture(200).await;
    let c = f.coordinator.clone();
    let (a, b) = (member_id(&c).await, member_id(&c).await);
    let (ja, jb) = tokio::join!(
        c.join(join_request(&a, 300)),
        c.join(join_request(&b, 10_000))
    );
    let generation = ja.unwrap().generation_id;
    jb.unwrap();
    let (sa, sb) = tokio::join!(
        c.sync(sync(generation, &a, vec![])),
        c.sync(sync(generation, &b, vec![]))
    );
    sa.unwrap();
    sb.unwrap();
    // b keeps heartbeating, a goes silent.
    let mut rebalancing = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if let Err(GroupError::RebalanceInProgress { .. }) = c.heartbeat("g", generation, &b, None)
        {
            rebalancing = true;
            break;
        }
    }
    assert!(rebalancing, "a's session expired and the group rebalances");
    let rejoined = c.join(join_request(&b, 10_000)).await.unwrap();
    assert_eq!(rejoined.members.len(), 1);
    assert!(matches!(
        c.heartbeat("g", rejoined.generation_id, &a, None),
        Err(GroupError::UnknownMember { .. })
    ));
}

#[tokio::test]
async fn a_static_member_that_restarts_fences_its_old_incarnation() {
    let f = fixture(200).await;
    let c = f.coordinator.clone();
    let mut req = join_request("", 10_000);
    req.group_instance_id = Some("instance-1".into());
    let first = c.join(req.clone()).await.unwrap();
    let second = c.join(req).await.unwrap();
    assert_ne!(first.member_id, second.member_id);
    // The old incarnation is fenced, not merely unknown: it must stop rather than rejoin.
    assert!(matches!(
        c.heartbeat(
            "g",
            second.generation_id,
            &first.member_id,
            Some("instance-1")
        ),
        Err(GroupError::FencedInstance { .. })
    ));
    let mut rejoin = join_request(&first.member_id, 10_000);
    rejoin.group_instance_id = Some("instance-1".into());
    assert!(matches!(
        c.join(rejoin).await,
        Err(GroupError::FencedInstance { .. })
    ));
    c.heartbeat(
        "g",
        second.generation_id,
        &second.member_id,
        Some("instance-1"),
    )
    .unwrap();
    let d = c.describe("g").await.unwrap();
    assert_eq!(d.members.len(), 1);
    assert_eq!(
        d.members[0].group_instance_id.as_deref(),
        Some("instance-1")
    );
}

#[tokio::test]
async fn offsets_are_committed_by_members_or_standalone_consumers_and_survive() {
    let f = fixture(200).await;
    let c = f.coordinator.clone();
    let offsets = |o: i64| {
        vec![GroupOffset {
            tp: TopicPartition::new("t", 0),
            offset: Offset(o),
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_timestamp_ms: 0,
        }]
    };
    // A standalone consumer (no membership) may commit for an empty group.
    c.commit_offsets("solo", -1, "", None, &offsets(5))
        .await
        .unwrap();
    assert_eq!(c.fetch_offsets("solo").await.unwrap()[0].offset, Offset(5));

    let a = member_id(&c).await;
    let joined = c.join(join_request(&a, 10_000)).await.unwrap();
    c.sync(sync(joined.generation_id, &a, vec![]))
        .await
        .unwrap();
    c.commit_offsets("g", joined.generation_id, &a, None, &offsets(42))
        .await
        .unwrap();
    assert!(matches!(
        c.commit_offsets("g", joined.generation_id + 1, &a, None, &offsets(1))
            .await,
        Err(GroupError::IllegalGeneration { .. })
    ));
    assert!(matches!(
        c.commit_offsets("g", -1, "", None, &offsets(1)).await,
        Err(GroupError::UnknownMember { .. })
    ));
    assert_eq!(c.fetch_offsets("g").await.unwrap()[0].offset, Offset(42));
    let listed = c.list().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|g| (g.group_id.as_str(), g.state))
            .collect::<Vec<_>>(),
        vec![("g", "Stable"), ("solo", "Empty")]
    );
    assert!(matches!(
        c.delete("g").await,
        Err(GroupError::NonEmptyGroup { .. })
    ));
    c.delete("solo").await.unwrap();
    assert!(matches!(
        c.delete("solo").await,
        Err(GroupError::GroupNotFound { .. })
    ));
    assert_eq!(c.describe("solo").await.unwrap().state, "Dead");
    assert!(matches!(
        c.join(JoinRequest {
            session_timeout_ms: 1,
            ..join_request("", 1)
        })
        .await,
        Err(GroupError::InvalidSessionTimeout { .. })
    ));
}
