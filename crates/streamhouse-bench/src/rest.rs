//! The REST produce benchmark: concurrent HTTP clients POST records to a server's REST API
//! (`/api/v1/produce`, or `/api/v1/produce/batch` with several records per request), each
//! waiting for its answer before the next request (closed loop). Latency is per request,
//! from sending it to the answer with the records' offsets; offsets are checked like the
//! Kafka produce benchmark's.

use std::time::Duration;

use indicatif::ProgressBar;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::checker::OffsetChecker;
use crate::config::BenchConfig;
use crate::error::BenchError;
use crate::produce::{gather, TaskResult};
use crate::progress;
use crate::report::{BenchKind, BenchReport};

/// A JSON-safe value of `len` bytes (printable ASCII, so the stored value is `len` bytes).
fn text_payload(len: usize) -> String {
    crate::produce::payload(len)
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect()
}

fn http_error(what: impl Into<String>) -> BenchError {
    BenchError::Http(what.into())
}

/// Produces `cfg.records` records through the REST API at `cfg.http` with `cfg.producers`
/// concurrent clients, `cfg.rest_batch` records per request.
pub async fn run_rest_produce(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    cfg.validate()?;
    let base = format!("http://{}/api/v1", cfg.http);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| http_error(format!("HTTP client: {e}")))?;

    // The topic, and where its partitions end now.
    let created = client
        .post(format!("{base}/topics"))
        .json(&json!({"name": cfg.topic, "partitions": cfg.partitions}))
        .send()
        .await
        .map_err(|e| http_error(format!("create topic: {e}")))?;
    if !(created.status().is_success() || created.status() == reqwest::StatusCode::CONFLICT) {
        return Err(http_error(format!(
            "create topic: HTTP {}",
            created.status()
        )));
    }
    let topic: Value = client
        .get(format!("{base}/topics/{}", cfg.topic))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| http_error(format!("describe topic: {e}")))?
        .json()
        .await
        .map_err(|e| http_error(format!("describe topic: {e}")))?;
    let mut checker = OffsetChecker::new();
    for p in topic["partitions"].as_array().into_iter().flatten() {
        if let (Some(partition), Some(end)) =
            (p["partition"].as_i64(), p["high_watermark"].as_i64())
        {
            checker.start(i32::try_from(partition).unwrap_or(-1), end);
        }
    }

    let value = text_payload(cfg.record_size);
    let bar = progress::bar(cfg.progress, cfg.records, "rest produce");
    let clients = u64::try_from(cfg.producers).unwrap_or(1);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.producers);
    for i in 0..clients {
        let share = cfg.records / clients + u64::from(i < cfg.records % clients);
        tasks.push(tokio::spawn(client_task(
            client.clone(),
            base.clone(),
            cfg.topic.clone(),
            value.clone(),
            share,
            cfg.rest_batch,
            bar.clone(),
        )));
    }
    let gathered = gather(tasks, Some(&mut checker)).await;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let gathered = gathered?;
    Ok(BenchReport::new(
        BenchKind::RestProduce,
        gathered.records,
        gathered.bytes,
        elapsed,
        &gathered.latency_us,
        checker.errors(),
    ))
}

/// One client's loop: `count` records, `batch` per request, one request at a time.
async fn client_task(
    client: reqwest::Client,
    base: String,
    topic: String,
    value: String,
    count: u64,
    batch: usize,
    bar: ProgressBar,
) -> Result<TaskResult, BenchError> {
    let mut result = TaskResult::new();
    let record_bytes = u64::try_from(value.len()).unwrap_or(u64::MAX);
    let batch = u64::try_from(batch.max(1)).unwrap_or(1);
    while result.records < count {
        let n = batch.min(count - result.records);
        let sent_at = Instant::now();
        let acked: Vec<(i32, i64)> = if n == 1 {
            let body = json!({"topic": topic, "value": value});
            let answer = post(&client, &format!("{base}/produce"), &body).await?;
            vec![offset_of(&answer)?]
        } else {
            let records: Vec<Value> = (0..n)
                .map(|_| json!({"topic": topic, "value": value}))
                .collect();
            let body = json!({ "records": records });
            let answer = post(&client, &format!("{base}/produce/batch"), &body).await?;
            answer["results"]
                .as_array()
                .ok_or_else(|| http_error(format!("batch answer without results: {answer}")))?
                .iter()
                .map(offset_of)
                .collect::<Result<_, _>>()?
        };
        let us = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        result.latency_us.saturating_record(us.max(1));
        for (partition, offset) in acked {
            result.offsets.entry(partition).or_default().push(offset);
        }
        result.records += n;
        result.bytes += n * record_bytes;
        bar.inc(n);
    }
    Ok(result)
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value, BenchError> {
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| http_error(format!("POST {url}: {e}")))?;
    let status = resp.status();
    let answer: Value = resp
        .json()
        .await
        .map_err(|e| http_error(format!("POST {url}: HTTP {status}, body: {e}")))?;
    if !status.is_success() {
        return Err(http_error(format!("POST {url}: HTTP {status}: {answer}")));
    }
    Ok(answer)
}

/// The (partition, offset) of one produce answer, or its error.
fn offset_of(answer: &Value) -> Result<(i32, i64), BenchError> {
    match (answer["partition"].as_i64(), answer["offset"].as_i64()) {
        (Some(p), Some(o)) => Ok((i32::try_from(p).unwrap_or(-1), o)),
        _ => Err(http_error(format!("record not stored: {answer}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_payload_is_printable_and_sized() {
        let v = text_payload(100);
        assert_eq!(v.len(), 100);
        assert!(v.bytes().all(|b| b.is_ascii_lowercase()));
    }

    #[test]
    fn answers_give_offsets_or_errors() {
        assert_eq!(
            offset_of(&json!({"partition": 2, "offset": 7})).unwrap(),
            (2, 7)
        );
        assert!(offset_of(&json!({"partition": null, "offset": null, "error": {}})).is_err());
    }
}
