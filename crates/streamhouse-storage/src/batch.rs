//! Kafka RecordBatch (magic 2) validation, and the header fields the agent rewrites.
//!
//! Batches are stored as the producer sent them, so all four compression codecs pass through
//! untouched. Only the header is read here: parsing it by hand (rather than through a full
//! decoder) avoids decompressing every batch on the hot path; offsets below are Kafka's.
//!
//! ```text
//! 0  base_offset i64        21 attributes i16          43 producer_id i64
//! 8  batch_length i32       23 last_offset_delta i32   51 producer_epoch i16
//! 12 leader_epoch i32       27 base_timestamp i64      53 base_sequence i32
//! 16 magic i8               35 max_timestamp i64       57 record_count i32
//! 17 crc u32 (CRC-32C of bytes 21..end)                 61 records…
//! ```

use std::ops::Range;

/// Bytes before `batch_length` counts: base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed RecordBatch header.
pub const HEADER_LEN: usize = 61;
pub(crate) const CRC_START: usize = 21;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_COMPRESSION: i16 = 0x07;

/// Why bytes are not a valid record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch at byte {at} is truncated: {needed} bytes needed, {available} left")]
    Truncated {
        at: usize,
        needed: usize,
        available: usize,
    },
    #[error("record batch at byte {at} has magic {magic}; only magic 2 is supported")]
    UnsupportedMagic { at: usize, magic: i8 },
    #[error(
        "record batch at byte {at} fails its CRC: stored {stored:#010x}, computed {computed:#010x}"
    )]
    CrcMismatch {
        at: usize,
        stored: u32,
        computed: u32,
    },
    #[error("record batch at byte {at} is invalid: {reason}")]
    Invalid { at: usize, reason: String },
    #[error("no record batch in the request")]
    Empty,
}

/// The header fields of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION
    }

    /// Whether the batch carries LogAppendTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }

    /// The offset of the last record (base offset + last offset delta).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The whole batch's size in bytes.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + usize::try_from(self.batch_length).unwrap_or(0)
    }
}

/// One batch found in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpan {
    pub range: Range<usize>,
    pub header: BatchHeader,
}

fn read<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

/// Reads the header at the start of `buf`, which must hold at least [`HEADER_LEN`] bytes.
pub(crate) fn header_at(buf: &[u8]) -> BatchHeader {
    BatchHeader {
        base_offset: i64::from_be_bytes(read(buf, 0)),
        batch_length: i32::from_be_bytes(read(buf, 8)),
        partition_leader_epoch: i32::from_be_bytes(read(buf, 12)),
        magic: i8::from_be_bytes(read(buf, 16)),
        crc: u32::from_be_bytes(read(buf, 17)),
        attributes: i16::from_be_bytes(read(buf, 21)),
        last_offset_delta: i32::from_be_bytes(read(buf, 23)),
        base_timestamp: i64::from_be_bytes(read(buf, 27)),
        max_timestamp: i64::from_be_bytes(read(buf, 35)),
        producer_id: i64::from_be_bytes(read(buf, 43)),
        producer_epoch: i16::from_be_bytes(read(buf, 51)),
        base_sequence: i32::from_be_bytes(read(buf, 53)),
        record_count: i32::from_be_bytes(read(buf, 57)),
    }
}

/// Splits `buf` into record batches without checking CRCs: for bytes we wrote ourselves.
/// A trailing partial batch (Kafka allows one at the end of a fetch) ends the walk.
pub fn walk(buf: &[u8]) -> Vec<BatchSpan> {
    let mut spans = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER_LEN {
        let header = header_at(&buf[at..]);
        let Ok(len) = usize::try_from(header.batch_length) else {
            break;
        };
        let end = at + LOG_OVERHEAD + len;
        if len < HEADER_LEN - LOG_OVERHEAD || end > buf.len() {
            break;
        }
        spans.push(BatchSpan {
            range: at..end,
            header,
        });
        at = end;
    }
    spans
}

/// Validates every batch in a producer's record set: lengths, magic 2, CRC-32C, and record
/// counts that agree with the offset deltas. Returns the batches in order.
pub fn validate(buf: &[u8]) -> Result<Vec<BatchSpan>, BatchError> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let available = buf.len() - at;
        if available < HEADER_LEN {
            return Err(BatchError::Truncated {
                at,
                needed: HEADER_LEN,
                available,
            });
        }
        let header = header_at(&buf[at..]);
        if header.magic != 2 {
            return Err(BatchError::UnsupportedMagic {
                at,
                magic: header.magic,
            });
        }
        let len = usize::try_from(header.batch_length)
            .ok()
            .filter(|len| *len >= HEADER_LEN - LOG_OVERHEAD)
            .ok_or_else(|| BatchError::Invalid {
                at,
                reason: format!("batch length {} is too small", header.batch_length),
            })?;
        let needed = LOG_OVERHEAD + len;
        if needed > available {
            return Err(BatchError::Truncated {
                at,
                needed,
                available,
            });
        }
        let computed = crc32c::crc32c(&buf[at + CRC_START..at + needed]);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch {
                at,
                stored: header.crc,
                computed,
            });
        }
        if header.record_count < 1 || header.last_offset_delta != header.record_count - 1 {
            return Err(BatchError::Invalid {
                at,
                reason: format!(
                    "{} records with last offset delta {}",
                    header.record_count, header.last_offset_delta
                ),
            });
        }
        spans.push(BatchSpan {
            range: at..at + needed,
            header,
        });
        at += needed;
    }
    if spans.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(spans)
}

/// Sets the base offset and leader epoch of the batch at the start of `batch`. Neither is
/// covered by the CRC.
pub fn assign_offset(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Stamps the batch at the start of `batch` with LogAppendTime `now_ms`: sets the timestamp
/// type bit and the max timestamp, then recomputes the CRC, as a Kafka broker does.
pub fn stamp_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = i16::from_be_bytes(read(batch, 21)) | ATTR_TIMESTAMP_TYPE;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A zig-zag varint (as Kafka records use), and how many bytes it took.
pub(crate) fn varint(buf: &[u8]) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let decoded = i64::try_from(value >> 1).ok()? ^ -i64::try_from(value & 1).ok()?;
            return Some((decoded, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal uncompressed batch with `n` records with empty keys and one-byte values.
    pub(crate) fn sample_batch(n: i32, base_ts: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..n {
            let body = [
                0u8,               // attributes
                zig(i64::from(i)), // timestamp delta
                zig(i64::from(i)), // offset delta
                zig(-1),           // key length: null
                zig(1),            // value length
                b'v',
                0, // headers count
            ];
            records.push(zig(i64::try_from(body.len()).unwrap()));
            records.extend_from_slice(&body);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(
            &i32::try_from(HEADER_LEN - LOG_OVERHEAD + records.len())
                .unwrap()
                .to_be_bytes(),
        );
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&(base_ts + i64::from(n - 1)).to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn zig(v: i64) -> u8 {
        u8::try_from((v << 1) ^ (v >> 63)).unwrap()
    }

    #[test]
    fn validates_good_batches() {
        let mut buf = sample_batch(3, 1000);
        buf.extend(sample_batch(2, 2000));
        let spans = validate(&buf).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].header.record_count, 3);
        assert_eq!(spans[1].header.max_timestamp, 2001);
        assert_eq!(walk(&buf), spans);
    }

    #[test]
    fn rejects_bad_crc_magic_truncation_and_garbage() {
        let good = sample_batch(2, 0);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            validate(&bad_crc),
            Err(BatchError::CrcMismatch { .. })
        ));
        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        assert!(matches!(
            validate(&bad_magic),
            Err(BatchError::UnsupportedMagic { .. })
        ));
        assert!(matches!(
            validate(&good[..good.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate(&[1, 2, 3]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(validate(&[]), Err(BatchError::Empty)));
        let mut negative_len = good.clone();
        negative_len[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(validate(&negative_len).is_err());
    }

    #[test]
    fn offset_assignment_keeps_crc_valid_and_log_append_time_rewrites_it() {
        let mut b = sample_batch(4, 100);
        assign_offset(&mut b, 42, 7);
        let h = validate(&b).unwrap()[0].header;
        assert_eq!(
            (h.base_offset, h.partition_leader_epoch, h.last_offset()),
            (42, 7, 45)
        );
        stamp_log_append_time(&mut b, 99_999);
        let h = validate(&b).unwrap()[0].header;
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 99_999);
    }
}
