//! Consumer groups over the wire: librdkafka's balanced consumer (kcat -G) joins, consumes,
//! commits, and a restarted group resumes exactly after its committed offsets.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use streamhouse_testing::{kcat, temp_dir, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run streamhouse");
    assert!(
        out.status.success(),
        "streamhouse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Consumes with `kcat -G group` until every assigned partition is at its end; returns
/// (partition, offset, value) per record.
fn group_consume(addr: &str, group: &str, topic: &str) -> Vec<(i32, i64, String)> {
    let out = kcat(
        &[
            // (kcat's -o would override committed offsets in group mode; a new group starts
            // at the beginning through auto.offset.reset instead.)
            "-b",
            addr,
            "-G",
            group,
            topic,
            "-e",
            "-f",
            "%p %o %s\n",
            "-X",
            "auto.offset.reset=earliest",
            "-X",
            "auto.commit.interval.ms=100",
            "-X",
            "session.timeout.ms=6000",
        ],
        b"",
    );
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ' ').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
            )
        })
        .collect()
}

#[test]
fn a_group_resumes_exactly_after_its_committed_offsets_even_across_a_restart() {
    let dir = temp_dir();
    let mut server = ServerProcess::start(
        Path::new(BIN),
        dir.path(),
        &["--group-initial-rebalance-delay-ms", "100"],
    );
    let addr = server.kafka_addr.clone();
    cli(&[
        "topic",
        "create",
        "events",
        "--partitions",
        "3",
        "-b",
        &addr,
    ]);
    let input: String = (0..300).map(|i| format!("k{}:v{i}\n", i % 7)).collect();
    kcat(
        &["-P", "-b", &addr, "-t", "events", "-K:"],
        input.as_bytes(),
    );

    let first = group_consume(&addr, "readers", "events");
    assert_eq!(first.len(), 300, "the group reads everything once");
    let values: BTreeSet<&str> = first.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(values.len(), 300);

    // More records, and a server restart in between: the group's offsets are durable.
    let more: String = (300..340).map(|i| format!("k{}:v{i}\n", i % 7)).collect();
    kcat(&["-P", "-b", &addr, "-t", "events", "-K:"], more.as_bytes());
    server.terminate(std::time::Duration::from_secs(20));
    server.restart();
    let addr = server.kafka_addr.clone();
    let second = group_consume(&addr, "readers", "events");
    let mut got: Vec<String> = second.iter().map(|r| r.2.clone()).collect();
    got.sort();
    let mut expected: Vec<String> = (300..340).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(
        got, expected,
        "no skip and no redelivery of committed records"
    );

    // Per partition the group saw offsets 0..n with no gap across the two runs.
    let mut per_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for (p, o, _) in first.iter().chain(second.iter()) {
        per_partition.entry(*p).or_default().push(*o);
    }
    for (p, mut offsets) in per_partition {
        offsets.sort_unstable();
        let n = i64::try_from(offsets.len()).unwrap();
        assert_eq!(offsets, (0..n).collect::<Vec<_>>(), "partition {p}");
    }
}

#[test]
fn the_cli_consumes_as_a_group_member_and_manages_groups() {
    let dir = temp_dir();
    let server = ServerProcess::start(
        Path::new(BIN),
        dir.path(),
        &["--group-initial-rebalance-delay-ms", "100"],
    );
    let addr = server.kafka_addr.as_str();
    cli(&["topic", "create", "cg", "--partitions", "3", "-b", addr]);
    let values: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    let mut args = vec!["produce", "cg", "-q", "-b", addr];
    args.extend(values.iter().map(String::as_str));
    cli(&args);
    let first = cli(&["consume", "cg", "-g", "readers", "-e", "-b", addr]);
    assert_eq!(first.lines().count(), 30);
    cli(&["produce", "cg", "-q", "late1", "late2", "-b", addr]);
    let second = cli(&["consume", "cg", "-g", "readers", "-e", "-b", addr]);
    let mut got: Vec<&str> = second.lines().collect();
    got.sort_unstable();
    assert_eq!(
        got,
        vec!["late1", "late2"],
        "resumes after the committed offsets"
    );

    let listed = cli(&["group", "list", "-b", addr]);
    assert!(listed.contains("readers\tEmpty\tconsumer"), "{listed}");
    let described = cli(&["group", "describe", "readers", "-b", addr]);
    let lag_lines: Vec<&str> = described
        .lines()
        .filter(|l| l.trim_start().starts_with("cg "))
        .collect();
    assert_eq!(lag_lines.len(), 3, "{described}");
    assert!(
        lag_lines.iter().all(|l| l.trim_end().ends_with(" 0")),
        "no lag: {described}"
    );
    cli(&["group", "delete", "readers", "-b", addr]);
    assert!(!cli(&["group", "list", "-b", addr]).contains("readers"));
}
