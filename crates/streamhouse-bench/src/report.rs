//! The result of a benchmark run and its text-table and JSON renderings.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Bytes in the "MB" of MB/s (MiB, as Kafka's perf tools count).
const MB: f64 = 1024.0 * 1024.0;

/// Which benchmark produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchKind {
    /// Producing records.
    Produce,
    /// Consuming records.
    Consume,
    /// Consuming records with a consumer group of several members.
    GroupConsume,
    /// Producing at a fixed rate while a group member consumes: send-to-receive latency.
    EndToEnd,
    /// Producing through the REST API.
    RestProduce,
}

impl BenchKind {
    /// Lower-case name, as used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchKind::Produce => "produce",
            BenchKind::Consume => "consume",
            BenchKind::GroupConsume => "group-consume",
            BenchKind::EndToEnd => "end-to-end",
            BenchKind::RestProduce => "rest-produce",
        }
    }
}

impl std::fmt::Display for BenchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Throughput and latency of one run.
///
/// Latency is per record from `send` to its offset being known for produce, per fetch round
/// (`poll`) for consume and group-consume, and per record from its scheduled send time to
/// its arrival at the consumer for end-to-end; all zero when nothing was measured (acks = 0).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Produce or consume.
    pub kind: BenchKind,
    /// Records written or read.
    pub records: u64,
    /// Payload bytes (keys + values) written or read.
    pub bytes: u64,
    /// Wall time of the measured part of the run.
    pub elapsed: Duration,
    /// `records / elapsed`.
    pub records_per_sec: f64,
    /// `bytes / elapsed` in MiB/s.
    pub mb_per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// 99.9th percentile latency, ms.
    pub p999_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
    /// Duplicate or missing offsets seen (produce, group-consume and end-to-end; must be 0).
    pub offset_errors: u64,
}

fn us_to_ms(us: u64) -> f64 {
    // Microsecond counts of a benchmark fit f64 exactly.
    us as f64 / 1000.0
}

impl BenchReport {
    /// Builds a report from counts, wall time and a latency histogram in microseconds.
    pub fn new(
        kind: BenchKind,
        records: u64,
        bytes: u64,
        elapsed: Duration,
        latency_us: &Histogram<u64>,
        offset_errors: u64,
    ) -> BenchReport {
        let secs = elapsed.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let q = |quantile: f64| {
            if latency_us.is_empty() {
                0.0
            } else {
                us_to_ms(latency_us.value_at_quantile(quantile))
            }
        };
        BenchReport {
            kind,
            records,
            bytes,
            elapsed,
            records_per_sec: per_sec(records),
            mb_per_sec: per_sec(bytes) / MB,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if latency_us.is_empty() {
                0.0
            } else {
                us_to_ms(latency_us.max())
            },
            offset_errors,
        }
    }

    /// A plain, aligned two-column summary.
    pub fn render_table(&self) -> String {
        let rows: Vec<(&str, String)> = vec![
            ("benchmark", self.kind.to_string()),
            ("records", self.records.to_string()),
            (
                "bytes",
                format!("{} ({:.2} MiB)", self.bytes, self.bytes as f64 / MB),
            ),
            ("elapsed", format!("{:.3} s", self.elapsed.as_secs_f64())),
            ("records/s", format!("{:.1}", self.records_per_sec)),
            ("MiB/s", format!("{:.2}", self.mb_per_sec)),
            ("latency p50", format!("{:.3} ms", self.p50_ms)),
            ("latency p99", format!("{:.3} ms", self.p99_ms)),
            ("latency p99.9", format!("{:.3} ms", self.p999_ms)),
            ("latency max", format!("{:.3} ms", self.max_ms)),
            ("offset errors", self.offset_errors.to_string()),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }

    /// One JSON object; numbers are plain, durations are in seconds / milliseconds.
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"kind\":\"{}\",\"records\":{},\"bytes\":{},\"elapsed_secs\":{},",
                "\"records_per_sec\":{},\"mb_per_sec\":{},\"p50_ms\":{},\"p99_ms\":{},",
                "\"p999_ms\":{},\"max_ms\":{},\"offset_errors\":{}}}"
            ),
            self.kind.as_str(),
            self.records,
            self.bytes,
            json_f64(self.elapsed.as_secs_f64()),
            json_f64(self.records_per_sec),
            json_f64(self.mb_per_sec),
            json_f64(self.p50_ms),
            json_f64(self.p99_ms),
            json_f64(self.p999_ms),
            json_f64(self.max_ms),
            self.offset_errors,
        )
    }
}

/// A JSON number with up to 3 decimals; `null` for NaN or infinity.
fn json_f64(v: f64) -> String {
    if !v.is_finite() {
        return "null".to_owned();
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" || s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BenchReport {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            h.saturating_record(us * 10);
        }
        BenchReport::new(
            BenchKind::Produce,
            1000,
            1000 * 1024,
            Duration::from_millis(2000),
            &h,
            0,
        )
    }

    #[test]
    fn numbers_are_derived() {
        let r = sample();
        assert!((r.records_per_sec - 500.0).abs() < 1e-9);
        assert!((r.mb_per_sec - 1000.0 * 1024.0 / MB / 2.0).abs() < 1e-9);
        assert!((r.p50_ms - 5.0).abs() < 0.01, "{}", r.p50_ms);
        assert!((r.p99_ms - 9.9).abs() < 0.01, "{}", r.p99_ms);
        assert!((r.max_ms - 10.0).abs() < 0.01, "{}", r.max_ms);
    }

    #[test]
    fn table_is_aligned() {
        let t = sample().render_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 11);
        assert!(lines[0].starts_with("benchmark "));
        assert!(lines[0].ends_with("produce"));
        // Every value starts in the same column.
        let col = lines[0].find("produce").expect("value");
        for l in &lines {
            assert!(l[..col].ends_with("  "), "{l:?}");
            assert_ne!(l.as_bytes()[col], b' ', "{l:?}");
        }
        assert!(t.contains("records/s      500.0"));
        assert!(t.contains("offset errors  0"));
    }

    #[test]
    fn json_is_flat_and_exact() {
        let j = sample().to_json();
        assert!(
            j.starts_with(
                "{\"kind\":\"produce\",\"records\":1000,\"bytes\":1024000,\"elapsed_secs\":2,"
            ),
            "{j}"
        );
        assert!(j.contains("\"records_per_sec\":500,"), "{j}");
        assert!(j.ends_with(",\"offset_errors\":0}"), "{j}");
        assert_eq!(j.matches('{').count(), 1);
    }

    #[test]
    fn json_numbers() {
        assert_eq!(json_f64(1.5), "1.5");
        assert_eq!(json_f64(2.0), "2");
        assert_eq!(json_f64(0.0), "0");
        assert_eq!(json_f64(0.0004), "0");
        assert_eq!(json_f64(-0.0001), "0");
        assert_eq!(json_f64(f64::NAN), "null");
        assert_eq!(json_f64(12.3456), "12.346");
    }

    #[test]
    fn empty_histogram_gives_zero_latency() {
        let r = BenchReport::new(
            BenchKind::Consume,
            0,
            0,
            Duration::ZERO,
            &latency_histogram(),
            0,
        );
        assert_eq!(r.p99_ms, 0.0);
        assert_eq!(r.records_per_sec, 0.0);
        assert!(r.to_json().contains("\"kind\":\"consume\""));
    }
}
