//! Record batch encoding for produce and safe decoding of fetched record batches.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

use crate::error::{boxed, ClientError};

/// Bytes before a v2 batch's `attributes` field: base offset (8), length (4), leader
/// epoch (4), magic (1), crc (4).
const ATTRIBUTES_OFFSET: usize = 21;
/// Offset of the magic byte within a batch.
const MAGIC_OFFSET: usize = 16;
/// Offset of the last offset delta: right after the attributes (2).
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
/// Offset of the record count: after attributes (2), last offset delta (4), first and max
/// timestamp (8 + 8), producer id (8), producer epoch (2) and base sequence (4).
const RECORD_COUNT_OFFSET: usize = 57;
/// Base offset (8) plus batch length (4).
const BATCH_LOG_OVERHEAD: usize = 12;

/// One record as given to the producer, before it has an offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Destination topic.
    pub topic: String,
    /// Explicit partition, or `None` to let the partitioner choose.
    pub partition: Option<i32>,
    /// Optional key (drives partitioning when `partition` is `None`).
    pub key: Option<Bytes>,
    /// Optional value (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// Headers. Kafka allows repeated keys but the codec keeps only the last value per key.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Creation timestamp in ms since the epoch; `None` means "now".
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with just a topic and a value.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: i32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    /// Rough encoded size, used for batch sizing and buffer accounting.
    pub fn estimated_size(&self) -> usize {
        let key = self.key.as_ref().map_or(0, Bytes::len);
        let value = self.value.as_ref().map_or(0, Bytes::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 4)
            .sum();
        // varint lengths, attributes, timestamp/offset deltas.
        key + value + headers + 21
    }
}

/// One record read by the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value, if any.
    pub value: Option<Bytes>,
    /// Headers in wire order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Timestamp in ms since the epoch (creation or log-append time, per the batch).
    pub timestamp: i64,
}

/// Builds the codec's [`Record`] for the `index`-th record of a batch.
///
/// Offsets are batch-relative (`index`); the broker assigns the real base offset. The
/// sequence is `index - 1` so that the encoder, which groups records into one batch only
/// while `offset - sequence` stays constant, keeps the whole batch together and writes a
/// base sequence of -1 (no idempotence). An idempotent producer overwrites producer id,
/// epoch and sequence (`base + index`, same constant difference) when it drains the batch.
pub(crate) fn to_wire_record(rec: &ProducerRecord, index: i32, timestamp: i64) -> Record {
    let headers: IndexMap<StrBytes, Option<Bytes>> = rec
        .headers
        .iter()
        .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
        .collect();
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: i64::from(index),
        sequence: index.wrapping_sub(1),
        timestamp,
        key: rec.key.clone(),
        value: rec.value.clone(),
        headers,
    }
}

/// Encodes `records` (offsets 0..n) as one uncompressed v2 record batch.
pub(crate) fn encode_batch(records: &[Record]) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &opts).map_err(|e| {
        ClientError::Encode {
            what: "record batch",
            source: boxed(e),
        }
    })?;
    Ok(buf.freeze())
}

fn compression_name(bits: i16) -> String {
    match bits {
        1 => "gzip".to_owned(),
        2 => "snappy".to_owned(),
        3 => "lz4".to_owned(),
        4 => "zstd".to_owned(),
        other => format!("unknown ({other})"),
    }
}

/// The offset after the last whole batch of fetched bytes (its base offset + last offset
/// delta + 1), from the headers alone: where a consumer continues, even when log compaction
/// removed the batch's last records. `None` without a whole batch.
pub fn batches_end(data: &[u8]) -> Option<i64> {
    let mut at = 0;
    let mut end = None;
    while data.len().saturating_sub(at) >= RECORD_COUNT_OFFSET + 4 {
        let field = |from: usize, n: usize| data.get(at + from..at + from + n);
        let base = i64::from_be_bytes(field(0, 8)?.try_into().ok()?);
        let len = usize::try_from(i32::from_be_bytes(field(8, 4)?.try_into().ok()?)).ok()?;
        let total = len.checked_add(BATCH_LOG_OVERHEAD)?;
        if data.len() - at < total {
            break;
        }
        let delta = i32::from_be_bytes(field(LAST_OFFSET_DELTA_OFFSET, 4)?.try_into().ok()?);
        end = Some(base.saturating_add(i64::from(delta)).saturating_add(1));
        at += total;
    }
    end
}

/// Decodes the record batches of one fetched partition into consumer records.
///
/// A fetch response may end with a partial batch (the broker cuts at the size limit);
/// that tail is ignored. Control records (transaction markers) are dropped. Compressed
/// batches fail with [`ClientError::UnsupportedCompression`].
pub fn decode_fetched(
    topic: &str,
    partition: i32,
    mut data: Bytes,
) -> Result<Vec<ConsumedRecord>, ClientError> {
    let mut out = Vec::new();
    while data.len() >= BATCH_LOG_OVERHEAD {
        let len_bytes: [u8; 4] = data
            .get(8..12)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| ClientError::corrupt("record batch", "short header"))?;
        let batch_len = usize::try_from(i32::from_be_bytes(len_bytes))
            .map_err(|_| ClientError::corrupt("record batch", "negative length"))?;
        let total = batch_len
            .checked_add(BATCH_LOG_OVERHEAD)
            .ok_or_else(|| ClientError::corrupt("record batch", "length overflow"))?;
        if data.len() < total {
            break; // partial trailing batch
        }
        let mut batch = data.split_to(total);
        if batch.len() < ATTRIBUTES_OFFSET + 2 {
            return Err(ClientError::corrupt("record batch", "batch too short"));
        }
        let magic = batch[MAGIC_OFFSET];
        if magic != 2 {
            return Err(ClientError::corrupt(
                "record batch",
                format!("unsupported magic {magic}"),
            ));
        }
        let attributes =
            i16::from_be_bytes([batch[ATTRIBUTES_OFFSET], batch[ATTRIBUTES_OFFSET + 1]]);
        let codec = attributes & 0x07;
        if codec != 0 {
            return Err(ClientError::UnsupportedCompression {
                codec: compression_name(codec),
            });
        }
        // The codec pre-allocates `record_count` entries; bound it by the batch size first.
        let count_bytes: [u8; 4] = batch
            .get(RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| ClientError::corrupt("record batch", "batch too short"))?;
        let record_count = i32::from_be_bytes(count_bytes);
        if usize::try_from(record_count).map_or(true, |n| n > batch.len()) {
            return Err(ClientError::corrupt(
                "record batch",
                format!("implausible record count {record_count}"),
            ));
        }
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| ClientError::corrupt("record batch", e.to_string()))?;
        for r in set.records {
            if r.control {
                continue;
            }
            out.push(ConsumedRecord {
                topic: topic.to_owned(),
                partition,
                offset: r.offset,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v))
                    .collect(),
                timestamp: r.timestamp,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};

    fn sample(n: i32) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let rec = ProducerRecord {
                    topic: "t".into(),
                    key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                    value: Some(Bytes::from(format!("value-{i}"))),
                    headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
                    ..ProducerRecord::default()
                };
                to_wire_record(&rec, i, 1_700_000_000_000 + i64::from(i))
            })
            .collect()
    }

    /// Rewrites the base offset of a single encoded batch, as a broker does.
    fn rebase(batch: &Bytes, base: i64) -> Bytes {
        let mut b = BytesMut::from(&batch[..]);
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn many_records_encode_as_one_batch_without_sequence() {
        let encoded = encode_batch(&sample(10)).expect("encode");
        let infos = RecordBatchDecoder::decode_batch_info(&mut encoded.clone()).expect("info");
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].record_count, 10);
        assert_eq!(infos[0].base_sequence, -1);
        assert_eq!(infos[0].producer_id, -1);
        assert_eq!(infos[0].min_offset, 0);
    }

    #[test]
    fn batches_end_is_past_the_last_whole_batch_even_past_its_last_record() {
        let a = rebase(&encode_batch(&sample(3)).expect("encode"), 100);
        let mut b = BytesMut::from(&rebase(&encode_batch(&sample(2)).expect("encode"), 103)[..]);
        // As log compaction leaves it: the batch ends 5 offsets on, its records end sooner.
        b[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
            .copy_from_slice(&4i32.to_be_bytes());
        let mut data = BytesMut::new();
        data.put_slice(&a);
        assert_eq!(batches_end(&data), Some(103));
        data.put_slice(&b);
        assert_eq!(batches_end(&data), Some(108));
        data.put_slice(&a[..a.len() / 2]); // a partial batch does not count
        assert_eq!(batches_end(&data), Some(108));
        assert_eq!(batches_end(&a[..40]), None);
        assert_eq!(batches_end(&[]), None);
    }

    #[test]
    fn decode_skips_partial_tail_and_keeps_offsets() {
        let a = rebase(&encode_batch(&sample(3)).expect("encode"), 100);
        let b = rebase(&encode_batch(&sample(2)).expect("encode"), 103);
        let mut data = BytesMut::new();
        data.put_slice(&a);
        data.put_slice(&b);
        data.put_slice(&b[..b.len() / 2]); // truncated third batch
        let recs = decode_fetched("t", 1, data.freeze()).expect("decode");
        let offsets: Vec<i64> = recs.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![100, 101, 102, 103, 104]);
        assert_eq!(recs[0].key.as_deref(), Some(&b"k0"[..]));
        assert_eq!(recs[1].key, None);
        assert_eq!(recs[2].value.as_deref(), Some(&b"value-2"[..]));
        assert_eq!(
            recs[0].headers,
            vec![("h".to_owned(), Some(Bytes::from_static(b"v")))]
        );
        assert_eq!(recs[4].timestamp, 1_700_000_000_001);
    }

    #[test]
    fn compressed_batch_is_a_typed_error() {
        let batch = encode_batch(&sample(1)).expect("encode");
        let mut b = BytesMut::from(&batch[..]);
        let attrs = (&b[ATTRIBUTES_OFFSET..]).get_i16() | 1;
        b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
        let err = decode_fetched("t", 0, b.freeze()).expect_err("must fail");
        assert!(
            matches!(err, ClientError::UnsupportedCompression { ref codec } if codec == "gzip")
        );
    }

    #[test]
    fn garbage_is_corrupt_not_panic() {
        let mut junk = BytesMut::new();
        junk.put_i64(0);
        junk.put_i32(20);
        junk.put_slice(&[0xff; 20]);
        assert!(decode_fetched("t", 0, junk.freeze()).is_err());
        let mut neg = BytesMut::new();
        neg.put_i64(0);
        neg.put_i32(-5);
        assert!(decode_fetched("t", 0, neg.freeze()).is_err());
    }
}
