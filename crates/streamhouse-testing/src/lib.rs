//! Test helpers shared by integration tests:
//!
//! - [`ServerProcess`]: a `streamhouse serve` child process on a random loopback port, which
//!   can be stopped gracefully (SIGTERM) or killed (SIGKILL) and restarted on its data dir.
//! - [`kcat`]: runs Debian's kcat, failing clearly when it is missing.
//! - [`record_batch`]: builds RecordBatch v2 bytes for raw protocol tests;
//!   [`idempotent_record_batch`] as an idempotent producer sends them.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
pub mod stores;
pub use kafka_protocol::records::Compression;
use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
pub use stores::{free_port, PostgresSchema, S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

/// A `streamhouse serve` process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    binary: PathBuf,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// The Kafka listener, "127.0.0.1:PORT".
    pub kafka_addr: String,
    /// The HTTP server (REST API, console, metrics), "127.0.0.1:PORT".
    pub http_addr: String,
}

impl ServerProcess {
    /// Starts `binary serve` on `data_dir` with a random port and waits until it is ready.
    pub fn start(binary: &Path, data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
        ServerProcess::start_with_env(binary, data_dir, extra_args, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let extra_args = owned(extra_args);
        let env = owned_env(env);
        let (child, ready) = spawn(binary, data_dir, &extra_args, &env);
        ServerProcess {
            child,
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            extra_args,
            env,
            kafka_addr: ready.kafka,
            http_addr: ready.http,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for server") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("server did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts the server again on the same data dir (a new random port).
    pub fn restart(&mut self) {
        if self.is_running() {
            self.kill9();
        }
        let (child, ready) = spawn(&self.binary, &self.data_dir, &self.extra_args, &self.env);
        self.child = child;
        self.kafka_addr = ready.kafka;
        self.http_addr = ready.http;
    }

    /// Restarts with other flags and environment variables (kept for later restarts).
    pub fn restart_with(&mut self, extra_args: &[&str], env: &[(&str, &str)]) {
        self.extra_args = owned(extra_args);
        self.env = owned_env(env);
        self.restart();
    }

    /// Waits up to `timeout` for the process to exit by itself; whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// The addresses of the server's ready line.
struct Ready {
    kafka: String,
    http: String,
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn owned_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spawn(
    binary: &Path,
    data_dir: &Path,
    extra_args: &[String],
    env: &[(String, String)],
) -> (Child, Ready) {
    std::fs::create_dir_all(data_dir).expect("create data dir");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("server.log"))
        .expect("open server log");
    let mut child = Command::new(binary)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--kafka-addr")
        .arg("127.0.0.1:0")
        .args(
            // Servers of parallel tests must not all take the default HTTP port.
            if extra_args.iter().any(|a| a == "--http-addr") {
                &[][..]
            } else {
                &["--http-addr", "127.0.0.1:0"][..]
            },
        )
        .args(extra_args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.trim().strip_prefix("streamhouse ready ") {
                let field = |name: &str| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix(name))
                        .unwrap_or_default()
                        .to_string()
                };
                let _ = tx.send(Ready {
                    kafka: field("kafka="),
                    http: field("http="),
                });
            }
            line.clear();
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(ready) => (child, ready),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
            panic!("server did not become ready within 30 s; log:\n{log}");
        }
    }
}

/// Runs kcat with `args`, feeding `stdin`; returns stdout. Panics with a clear message when
/// kcat is not installed (the test command installs it) or fails.
pub fn kcat(args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("kcat is required (apt-get install kcat): {e}"));
    let mut input = child.stdin.take().expect("kcat stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("kcat stdout")
        .read_to_string(&mut out)
        .expect("read kcat output");
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("kcat stderr")
        .read_to_string(&mut err);
    let status = child.wait().expect("wait for kcat");
    let _ = writer.join();
    assert!(status.success(), "kcat {args:?} failed: {status}\n{err}");
    out
}

/// A RecordBatch v2 (uncompressed) with the given (key, value) records; record `i` has
/// timestamp `timestamp + i`.
pub fn record_batch(records: &[(Option<&[u8]>, &[u8])], timestamp: i64) -> Bytes {
    compressed_record_batch(records, timestamp, Compression::None)
}

/// A RecordBatch v2 compressed with `compression`, as a producer would send it.
pub fn compressed_record_batch(
    records: &[(Option<&[u8]>, &[u8])],
    timestamp: i64,
    compression: Compression,
) -> Bytes {
    let records: Vec<_> = records.iter().map(|(k, v)| (*k, Some(*v))).collect();
    encode_batch(&records, timestamp, compression, None)
}

/// A record to encode: its key and value, either of which may be null.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A RecordBatch v2 of (key, value) records where a value may be null (a tombstone),
/// compressed with `compression`; record `i` has timestamp `timestamp + i`.
pub fn keyed_record_batch(
    records: &[KeyValue<'_>],
    timestamp: i64,
    compression: Compression,
) -> Bytes {
    encode_batch(records, timestamp, compression, None)
}

/// A RecordBatch v2 (uncompressed) from an idempotent producer: record `i` has sequence
/// `base_sequence + i` and timestamp `timestamp + i`.
pub fn idempotent_record_batch(
    records: &[(Option<&[u8]>, &[u8])],
    timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Bytes {
    let records: Vec<_> = records.iter().map(|(k, v)| (*k, Some(*v))).collect();
    encode_batch(
        &records,
        timestamp,
        Compression::None,
        Some((producer_id, producer_epoch, base_sequence)),
    )
}

/// Encodes one batch; `producer` is (id, epoch, base sequence) for idempotent batches.
fn encode_batch(
    records: &[KeyValue<'_>],
    timestamp: i64,
    compression: Compression,
    producer: Option<(i64, i16, i32)>,
) -> Bytes {
    let (producer_id, producer_epoch, base_sequence) = producer.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| {
            let i = i32::try_from(i).expect("batch size");
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                // The encoder keeps records in one batch while offset - sequence is constant;
                // without a producer the base sequence stays -1 (none).
                sequence: base_sequence.wrapping_add(i),
                timestamp: timestamp + i64::from(i),
                key: key.map(Bytes::copy_from_slice),
                value: value.map(Bytes::copy_from_slice),
                headers: Default::default(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode record batch");
    buf.freeze()
}

/// A fresh temporary directory for a test's data.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Every file below `dir`, recursively (none if `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("read directory entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Reads partitions `0..partitions` of `topic` from the beginning until three polls in a row
/// bring nothing; returns each record's value by (partition, offset). Panics if an offset is
/// read twice.
pub async fn read_everything(
    addr: &str,
    topic: &str,
    partitions: i32,
) -> std::collections::HashMap<(i32, i64), Bytes> {
    use streamhouse_client::{Consumer, ConsumerConfig, OffsetSpec};
    let mut consumer = Consumer::new(addr, ConsumerConfig::default())
        .await
        .expect("consumer");
    consumer
        .assign(topic, (0..partitions).collect(), OffsetSpec::Earliest)
        .await
        .expect("assign");
    let mut out = std::collections::HashMap::new();
    let mut idle = 0;
    while idle < 3 {
        let records = consumer
            .poll(Duration::from_millis(300))
            .await
            .expect("poll");
        if records.is_empty() {
            idle += 1;
        }
        for r in records {
            let value = r.value.unwrap_or_default();
            assert!(
                out.insert((r.partition, r.offset), value).is_none(),
                "offset {}/{} read twice",
                r.partition,
                r.offset
            );
        }
    }
    out
}
