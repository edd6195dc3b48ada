//! Real stores for distributed tests: an `s3s-fs` S3 server and a PostgreSQL schema.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const S3_ACCESS_KEY: &str = "streamhouse-test";
pub const S3_SECRET_KEY: &str = "streamhouse-test-secret";

/// An `s3s-fs` process serving `root` (one directory per bucket); killed on drop. It can be
/// stopped and started again on the same port, to test an object store outage.
pub struct S3Server {
    child: Option<Child>,
    root: PathBuf,
    port: u16,
    pub endpoint: String,
}

impl S3Server {
    /// Starts a server on `root` with an empty bucket `bucket`.
    pub fn start(root: &Path, bucket: &str) -> S3Server {
        std::fs::create_dir_all(root.join(bucket)).expect("create the bucket directory");
        let port = free_port();
        let mut server = S3Server {
            child: None,
            root: root.to_path_buf(),
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.restart();
        server
    }

    /// `streamhouse serve` flags for `s3://bucket/prefix` on this server.
    pub fn serve_args(&self, bucket: &str, prefix: &str) -> Vec<String> {
        [
            "--object-store-url",
            &format!("s3://{bucket}/{prefix}"),
            "--s3-endpoint",
            &self.endpoint,
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            S3_ACCESS_KEY,
            "--s3-secret-access-key",
            S3_SECRET_KEY,
            "--s3-allow-http",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Stops the server (SIGKILL); requests fail until [`S3Server::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and root.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start s3s-fs ({e}). This test needs it on PATH; scripts/test installs \
                     it, or run: cargo install s3s-fs --version 0.14.1 --features binary --locked"
                )
            });
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("s3s-fs exited before accepting connections: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not accept connections on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The PostgreSQL server tests use (`STREAMHOUSE_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`).
pub fn postgres_server_url() -> String {
    std::env::var("STREAMHOUSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema of its own on the test PostgreSQL server, so that tests in parallel never see
/// each other's tables; dropped on drop. Driven through `psql`, which comes with the server.
pub struct PostgresSchema {
    server_url: String,
    pub name: String,
    /// The `--metadata-url` of a store in this schema; its sessions carry the schema's name
    /// as `application_name`.
    pub url: String,
}

impl PostgresSchema {
    pub fn create() -> PostgresSchema {
        let server_url = postgres_server_url();
        let name = format!("sh_{}", uuid_like());
        psql(&server_url, &format!("CREATE SCHEMA {name}"));
        let separator = if server_url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{server_url}{separator}options=-c%20search_path%3D{name}&application_name={name}"
        );
        PostgresSchema {
            server_url,
            name,
            url,
        }
    }

    /// Ends every session of this schema's stores (`pg_terminate_backend`), as a database
    /// restart or a network cut would. Returns how many were ended.
    pub fn terminate_connections(&self) -> usize {
        let out = psql(
            &self.server_url,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{}'",
                self.name
            ),
        );
        out.trim().parse().unwrap_or(0)
    }

    /// Runs one SQL statement in this schema; returns psql's unaligned output.
    pub fn query(&self, sql: &str) -> String {
        psql(
            &self.server_url,
            &format!("SET search_path TO {}; {sql}", self.name),
        )
    }
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        let _ = self.terminate_connections();
        let _ = Command::new("psql")
            .arg(&self.server_url)
            .args(["-X", "-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("psql is required for PostgreSQL tests: {e}"));
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique name part: time and process id (no uuid dependency here).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}_{:x}_{}",
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
