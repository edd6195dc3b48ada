//! The records inside a RecordBatch v2: what log compaction reads of each record (offset,
//! key, whether the value is null, timestamp) and a batch rebuilt with only some of its
//! records, every kept record at its original offset.
//!
//! ```text
//! record = length varint | attributes i8 | timestamp delta varlong | offset delta varint
//!          | key length varint | key | value length varint | value | headers…
//! ```
//!
//! Parsed by hand rather than through `kafka_protocol`'s decoder and encoder: its encoder
//! derives the base offset and last offset delta from the records it is given, but a
//! compacted batch keeps both (as Kafka's cleaner does, so that the batch still ends where
//! it ended and a consumer moves past it, and the producer's last sequence survives), and
//! kept records are copied byte for byte. The compression codecs are `kafka_protocol`'s.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::batch::{
    header_at, varint, BatchError, BatchHeader, CRC_START, HEADER_LEN, LOG_OVERHEAD,
};

/// Attribute bit 6 (KIP-534): the base timestamp field holds the batch's delete horizon, the
/// time after which log compaction may remove its tombstones. Record timestamps stay
/// `base timestamp + delta`, so readers that do not know the bit see the same timestamps.
const ATTR_DELETE_HORIZON: i16 = 0x40;
/// Transactional (bit 4) and control (bit 5) batches.
const ATTR_TRANSACTIONAL_OR_CONTROL: i16 = 0x30;

/// One record of a batch, as positions in [`Records`]' decompressed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset_delta: i32,
    timestamp_delta: i64,
    key: Option<Range<usize>>,
    /// The value is null: a tombstone, in a compacted topic.
    pub tombstone: bool,
    /// The whole record, its length prefix included.
    span: Range<usize>,
    /// Where the record's attributes byte is (after the length prefix).
    body_start: usize,
    /// Where the record's bytes after its timestamp delta start.
    after_timestamp: usize,
}

/// A batch's header and its records, decompressed.
#[derive(Debug, Clone)]
pub struct Records {
    pub header: BatchHeader,
    /// The records section, decompressed.
    data: Bytes,
    pub records: Vec<Record>,
}

impl Records {
    /// Parses the one batch `batch` holds (its CRC is not checked: bytes from our store or
    /// already validated at append).
    pub fn parse(batch: &[u8]) -> Result<Records, BatchError> {
        let invalid = |reason: String| BatchError::Invalid { at: 0, reason };
        if batch.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                at: 0,
                needed: HEADER_LEN,
                available: batch.len(),
            });
        }
        let header = header_at(batch);
        if header.magic != 2 {
            return Err(BatchError::UnsupportedMagic {
                at: 0,
                magic: header.magic,
            });
        }
        let end = header.total_len();
        if end > batch.len() || end < HEADER_LEN {
            return Err(invalid(format!(
                "batch length {} does not fit the {} bytes given",
                header.batch_length,
                batch.len()
            )));
        }
        let data = decompress(header.compression(), &batch[HEADER_LEN..end])?;
        let count = usize::try_from(header.record_count)
            .ok()
            .filter(|n| *n <= data.len())
            .ok_or_else(|| invalid(format!("implausible record count {}", header.record_count)))?;
        let mut records = Vec::with_capacity(count);
        let mut at = 0;
        for i in 0..count {
            let record = parse_record(&data, at)
                .ok_or_else(|| invalid(format!("record {i} of {count} is malformed")))?;
            at = record.span.end;
            records.push(record);
        }
        if at != data.len() {
            return Err(invalid(format!(
                "{} bytes follow the last of {count} records",
                data.len() - at
            )));
        }
        Ok(Records {
            header,
            data,
            records,
        })
    }

    /// The record's key; `None` for a null key.
    pub fn key(&self, record: &Record) -> Option<&[u8]> {
        record.key.clone().map(|range| &self.data[range])
    }

    /// The record's offset.
    pub fn offset(&self, record: &Record) -> i64 {
        self.header.base_offset + i64::from(record.offset_delta)
    }

    /// The record's timestamp (the batch's append time under LogAppendTime).
    pub fn timestamp(&self, record: &Record) -> i64 {
        if self.header.is_log_append_time() {
            self.header.max_timestamp
        } else {
            self.header
                .base_timestamp
                .saturating_add(record.timestamp_delta)
        }
    }

    /// The time after which log compaction may remove this batch's tombstones, once an
    /// earlier compaction set it.
    pub fn delete_horizon(&self) -> Option<i64> {
        (self.header.attributes & ATTR_DELETE_HORIZON != 0).then_some(self.header.base_timestamp)
    }

    /// Transactional and control batches (never produced here: transactions are not served).
    pub fn is_transactional_or_control(&self) -> bool {
        self.header.attributes & ATTR_TRANSACTIONAL_OR_CONTROL != 0
    }

    /// The batch with only the records whose `keep` is true, each at its original offset,
    /// byte for byte except for its timestamp delta when the base timestamp changes. The
    /// base offset, last offset delta, producer fields and codec stay; with
    /// `delete_horizon` the batch records that horizon (KIP-534). `None` when no record is
    /// kept.
    pub fn rebuild(
        &self,
        keep: &[bool],
        delete_horizon: Option<i64>,
    ) -> Result<Option<Vec<u8>>, BatchError> {
        let invalid = |reason: &str| BatchError::Invalid {
            at: 0,
            reason: reason.to_string(),
        };
        let header = &self.header;
        let base_timestamp = delete_horizon.unwrap_or(header.base_timestamp);
        let shift = header
            .base_timestamp
            .checked_sub(base_timestamp)
            .ok_or_else(|| invalid("the delete horizon is too far from the base timestamp"))?;
        let mut body = BytesMut::with_capacity(self.data.len());
        let mut count = 0i32;
        let mut max_timestamp = i64::MIN;
        for (record, _) in self.records.iter().zip(keep).filter(|(_, keep)| **keep) {
            count += 1;
            max_timestamp = max_timestamp.max(self.timestamp(record));
            if shift == 0 {
                body.put_slice(&self.data[record.span.clone()]);
                continue;
            }
            let delta = record
                .timestamp_delta
                .checked_add(shift)
                .ok_or_else(|| invalid("a timestamp delta overflows"))?;
            let rest = &self.data[record.after_timestamp..record.span.end];
            let attributes = self.data[record.body_start];
            let len = 1 + zigzag_len(delta) + rest.len();
            put_zigzag(&mut body, i64::try_from(len).unwrap_or(i64::MAX));
            body.put_u8(attributes);
            put_zigzag(&mut body, delta);
            body.put_slice(rest);
        }
        if count == 0 {
            return Ok(None);
        }
        let records = compress(header.compression(), body.freeze())?;
        let mut attributes = header.attributes;
        if delete_horizon.is_some() {
            attributes |= ATTR_DELETE_HORIZON;
        }
        if header.is_log_append_time() {
            max_timestamp = header.max_timestamp;
        }
        // (Otherwise, as Kafka's cleaner does: the newest timestamp among the records kept.)
        let batch_length = i32::try_from(HEADER_LEN - LOG_OVERHEAD + records.len())
            .map_err(|_| invalid("the rebuilt batch is too large"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + records.len());
        out.put_i64(header.base_offset);
        out.put_i32(batch_length);
        out.put_i32(header.partition_leader_epoch);
        out.put_i8(2);
        out.put_u32(0); // the CRC, below
        out.put_i16(attributes);
        out.put_i32(header.last_offset_delta);
        out.put_i64(base_timestamp);
        out.put_i64(max_timestamp);
        out.put_i64(header.producer_id);
        out.put_i16(header.producer_epoch);
        out.put_i32(header.base_sequence);
        out.put_i32(count);
        out.put_slice(&records);
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Ok(Some(out))
    }
}

/// The record starting at `at` in `data`, or `None` if it is malformed.
fn parse_record(data: &[u8], at: usize) -> Option<Record> {
    let (len, n) = varint(data.get(at..)?)?;
    let body_start = at + n;
    let end = body_start.checked_add(usize::try_from(len).ok()?)?;
    let body = data.get(body_start..end)?;
    // attributes (one byte), then the timestamp delta.
    let (timestamp_delta, m) = varint(body.get(1..)?)?;
    let after_timestamp = body_start + 1 + m;
    let mut p = after_timestamp;
    let (offset_delta, k) = varint(data.get(p..end)?)?;
    p += k;
    let (key_len, k) = varint(data.get(p..end)?)?;
    p += k;
    let key = match key_len {
        -1 => None,
        len if len >= 0 => {
            let key_end = p.checked_add(usize::try_from(len).ok()?)?;
            if key_end > end {
                return None;
            }
            let key = p..key_end;
            p = key_end;
            Some(key)
        }
        _ => return None,
    };
    let (value_len, _) = varint(data.get(p..end)?)?;
    if value_len < -1 {
        return None;
    }
    Some(Record {
        offset_delta: i32::try_from(offset_delta).ok()?,
        timestamp_delta,
        key,
        tombstone: value_len == -1,
        span: at..end,
        body_start,
        after_timestamp,
    })
}

/// Bytes a zig-zag varint of `v` takes.
fn zigzag_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

/// Writes `v` as a zig-zag varint.
fn put_zigzag(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn codec_error(codec: &str, e: impl std::fmt::Display) -> BatchError {
    BatchError::Invalid {
        at: 0,
        reason: format!("{codec} records section: {e}"),
    }
}

/// The records section of a batch compressed with `codec` (0 none, 1 gzip, 2 snappy,
/// 3 lz4, 4 zstd), decompressed.
fn decompress(codec: i16, section: &[u8]) -> Result<Bytes, BatchError> {
    let mut input = Bytes::copy_from_slice(section);
    let whole = |b: &mut Bytes| Ok(b.clone());
    match codec {
        0 => Ok(input),
        1 => Gzip::decompress(&mut input, whole).map_err(|e| codec_error("gzip", e)),
        2 => Snappy::decompress(&mut input, whole).map_err(|e| codec_error("snappy", e)),
        3 => Lz4::decompress(&mut input, whole).map_err(|e| codec_error("lz4", e)),
        4 => Zstd::decompress(&mut input, whole).map_err(|e| codec_error("zstd", e)),
        other => Err(BatchError::Invalid {
            at: 0,
            reason: format!("unknown compression codec {other}"),
        }),
    }
}

/// `records` compressed with `codec`, as [`decompress`] reads it.
fn compress(codec: i16, records: Bytes) -> Result<Bytes, BatchError> {
    let mut out = BytesMut::new();
    let fill = |b: &mut BytesMut| {
        b.put_slice(&records);
        Ok(())
    };
    match codec {
        0 => return Ok(records.clone()),
        1 => Gzip::compress(&mut out, fill).map_err(|e| codec_error("gzip", e))?,
        2 => Snappy::compress(&mut out, fill).map_err(|e| codec_error("snappy", e))?,
        3 => Lz4::compress(&mut out, fill).map_err(|e| codec_error("lz4", e))?,
        4 => Zstd::compress(&mut out, fill).map_err(|e| codec_error("zstd", e))?,
        other => {
            return Err(BatchError::Invalid {
                at: 0,
                reason: format!("unknown compression codec {other}"),
            })
        }
    }
    Ok(out.freeze())
}

/// The offset deltas and timestamps of a batch's records (`None` when it does not parse).
pub fn record_timestamps(batch: &[u8]) -> Option<Vec<(i64, i64)>> {
    let batch = Records::parse(batch).ok()?;
    Some(
        batch
            .records
            .iter()
            .map(|r| (i64::from(r.offset_delta), batch.timestamp(r)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{assign_offset, validate};
    use kafka_protocol::records::{
        Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    /// (key, value, timestamp) of a record to encode.
    type Plain = (Option<Vec<u8>>, Option<Vec<u8>>, i64);
    /// (offset, key, value, timestamp) of a decoded record.
    type Decoded = (i64, Option<Vec<u8>>, Option<Vec<u8>>, i64);

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// A batch of `records` (key, value, timestamp) at `base_offset`, as a producer sends it.
    fn batch(records: &[Plain], codec: Compression, base_offset: i64) -> Vec<u8> {
        let records: Vec<KafkaRecord> = records
            .iter()
            .enumerate()
            .map(|(i, (key, value, timestamp))| KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 7,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: i64::try_from(i).unwrap(),
                sequence: i32::try_from(i).unwrap() + 10,
                timestamp: *timestamp,
                key: key.clone().map(Bytes::from),
                value: value.clone().map(Bytes::from),
                headers: [("h".into(), Some(Bytes::from_static(b"v")))]
                    .into_iter()
                    .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: codec,
            },
        )
        .unwrap();
        let mut out = buf.to_vec();
        assign_offset(&mut out, base_offset, 3);
        out
    }

    /// Every record of `batch` as (offset, key, value, timestamp), through kafka-protocol's
    /// decoder (which checks the CRC).
    fn decoded(batch: &[u8]) -> Vec<Decoded> {
        let mut buf = Bytes::copy_from_slice(batch);
        RecordBatchDecoder::decode(&mut buf)
            .unwrap()
            .records
            .into_iter()
            .map(|r| {
                (
                    r.offset,
                    r.key.map(|k| k.to_vec()),
                    r.value.map(|v| v.to_vec()),
                    r.timestamp,
                )
            })
            .collect()
    }

    fn sample() -> Vec<Plain> {
        vec![
            (Some(b"a".to_vec()), Some(b"1".to_vec()), 1_000),
            (Some(b"b".to_vec()), Some(b"2".to_vec()), 1_005),
            (Some(b"a".to_vec()), None, 999),
            (None, Some(b"no key".to_vec()), 1_010),
            (Some(b"c".to_vec()), Some(vec![7; 300]), 1_020),
        ]
    }

    #[test]
    fn parses_keys_offsets_tombstones_and_timestamps_of_every_codec() {
        for codec in CODECS {
            let b = batch(&sample(), codec, 40);
            let parsed = Records::parse(&b).unwrap();
            let seen: Vec<_> = parsed
                .records
                .iter()
                .map(|r| {
                    (
                        parsed.offset(r),
                        parsed.key(r).map(<[u8]>::to_vec),
                        r.tombstone,
                        parsed.timestamp(r),
                    )
                })
                .collect();
            let expected: Vec<_> = sample()
                .into_iter()
                .zip(40..)
                .map(|((k, v, ts), offset)| (offset, k, v.is_none(), ts))
                .collect();
            assert_eq!(seen, expected, "{codec:?}");
            assert_eq!(parsed.delete_horizon(), None);
        }
    }

    #[test]
    fn rebuilt_batches_keep_offsets_bytes_codec_and_producer_fields() {
        for codec in CODECS {
            let b = batch(&sample(), codec, 40);
            let original = Records::parse(&b).unwrap();
            let keep = [false, true, true, false, true];
            let rebuilt = original.rebuild(&keep, None).unwrap().unwrap();
            // A valid batch: CRC and lengths check out.
            let spans = crate::batch::walk(&rebuilt);
            assert_eq!(spans.len(), 1);
            assert_eq!(spans[0].range, 0..rebuilt.len());
            let h = spans[0].header;
            assert_eq!(h.base_offset, 40);
            assert_eq!(h.last_offset(), 44, "the batch still ends where it ended");
            assert_eq!(h.record_count, 3);
            assert_eq!(h.compression(), original.header.compression());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (7, 1, 10)
            );
            assert_eq!(h.partition_leader_epoch, 3);
            assert_eq!(h.max_timestamp, 1_020);
            let kept: Vec<_> = decoded(&b)
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(r, _)| r)
                .collect();
            assert_eq!(decoded(&rebuilt), kept, "{codec:?}");
            assert_eq!(original.rebuild(&[false; 5], None).unwrap(), None);
            // Keeping everything reproduces the records (and, uncompressed, the bytes).
            let all = original.rebuild(&[true; 5], None).unwrap().unwrap();
            assert_eq!(decoded(&all), decoded(&b));
            if codec == Compression::None {
                assert_eq!(all, b);
            }
        }
    }

    #[test]
    fn a_delete_horizon_moves_the_base_timestamp_but_no_record_timestamp() {
        for codec in CODECS {
            let b = batch(&sample(), codec, 0);
            let original = Records::parse(&b).unwrap();
            let horizon = 1_700_000_000_000;
            let rebuilt = original
                .rebuild(&[true, true, true, true, true], Some(horizon))
                .unwrap()
                .unwrap();
            let parsed = Records::parse(&rebuilt).unwrap();
            assert_eq!(parsed.delete_horizon(), Some(horizon));
            assert_eq!(parsed.header.base_timestamp, horizon);
            assert_eq!(decoded(&rebuilt), decoded(&b), "{codec:?}");
            // Rebuilt again without a new horizon, it keeps the one it has.
            let again = parsed
                .rebuild(&[true, false, true, true, true], None)
                .unwrap()
                .unwrap();
            assert_eq!(
                Records::parse(&again).unwrap().delete_horizon(),
                Some(horizon)
            );
        }
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let mut b = batch(&sample(), Compression::None, 0);
        // Claim one record more than there is.
        b[57..61].copy_from_slice(&6i32.to_be_bytes());
        assert!(Records::parse(&b).is_err());
        let b = batch(&sample(), Compression::None, 0);
        for cut in [0, 10, 61, 70, b.len() - 1] {
            let mut short = b[..cut].to_vec();
            if short.len() >= 12 {
                let len = i32::try_from(short.len() - 12).unwrap();
                short[8..12].copy_from_slice(&len.to_be_bytes());
            }
            assert!(Records::parse(&short).is_err(), "cut at {cut}");
        }
        let mut garbage = batch(&sample(), Compression::Gzip, 0);
        let last = garbage.len() - 5;
        garbage[61..last].fill(0xab);
        assert!(Records::parse(&garbage).is_err());
    }

    fn plain_record() -> impl Strategy<Value = Plain> {
        (
            proptest::option::weighted(0.9, proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::option::weighted(0.8, proptest::collection::vec(any::<u8>(), 0..200)),
            0i64..10_000_000_000_000,
        )
    }

    proptest! {
        /// Any records, any codec, any subset kept, with or without a new delete horizon: the
        /// rebuilt batch is valid, holds exactly the kept records with their offsets, keys,
        /// values and timestamps, and ends where the original ended.
        #[test]
        fn rebuilding_keeps_exactly_the_kept_records(
            records in proptest::collection::vec(plain_record(), 1..30),
            keep_seed in any::<u64>(),
            codec in 0usize..5,
            base_offset in 0i64..1_000_000_000,
            horizon in proptest::option::of(0i64..10_000_000_000_000),
        ) {
            let b = batch(&records, CODECS[codec], base_offset);
            prop_assert!(validate(&b).is_ok());
            let keep: Vec<bool> = (0..records.len()).map(|i| keep_seed >> (i % 64) & 1 == 1).collect();
            let original = Records::parse(&b).unwrap();
            let expected: Vec<_> = decoded(&b).into_iter().zip(&keep).filter(|(_, k)| **k).map(|(r, _)| r).collect();
            match original.rebuild(&keep, horizon).unwrap() {
                None => prop_assert!(expected.is_empty()),
                Some(rebuilt) => {
                    prop_assert_eq!(decoded(&rebuilt), expected);
                    let h = crate::batch::walk(&rebuilt)[0].header;
                    prop_assert_eq!(h.base_offset, base_offset);
                    prop_assert_eq!(h.last_offset(), original.header.last_offset());
                    prop_assert_eq!(Records::parse(&rebuilt).unwrap().delete_horizon(), horizon);
                }
            }
        }
    }
}
