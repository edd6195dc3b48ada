//! The object layout: one object per flush, holding the batches of every partition that
//! flush carried, followed by a footer that describes them.
//!
//! ```text
//! [chunk 0: record batches of one partition, in offset order]
//! [chunk 1] …
//! [footer: one entry per chunk]
//! [footer length: u32 BE][footer CRC-32C: u32 BE]["SHO1"]
//! entry = topic length u16 | topic UTF-8 | partition i32 | base offset i64 | end offset i64
//!         | byte start u64 | byte length u64 | max timestamp i64      (all big-endian)
//! ```
//!
//! The metadata index, not the footer, decides what is visible: an object no commit names
//! is ignored. The footer makes an object self-describing for tools and recovery checks.

use bytes::{BufMut, Bytes, BytesMut};
use streamhouse_metadata::{Offset, TopicPartition};

use crate::error::StorageError;

/// The last four bytes of every object.
pub const MAGIC: &[u8; 4] = b"SHO1";
const TRAILER_LEN: usize = 12;

/// Where one partition's chunk sits in an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub tp: TopicPartition,
    pub base_offset: Offset,
    /// One past the last offset in the chunk.
    pub end_offset: Offset,
    pub byte_start: u64,
    pub byte_len: u64,
    pub max_timestamp: i64,
}

/// Builds one object from per-partition chunks.
#[derive(Debug, Default)]
pub struct ObjectBuilder {
    data: BytesMut,
    chunks: Vec<ChunkLocation>,
}

impl ObjectBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        ObjectBuilder {
            data: BytesMut::with_capacity(bytes + 1024),
            chunks: Vec::new(),
        }
    }

    /// Appends a partition's batches (already carrying their offsets), given as the
    /// pieces they arrived in.
    pub fn add_chunk<'a>(
        &mut self,
        tp: TopicPartition,
        base_offset: Offset,
        end_offset: Offset,
        max_timestamp: i64,
        batches: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let start = self.data.len();
        for piece in batches {
            self.data.extend_from_slice(piece);
        }
        self.chunks.push(ChunkLocation {
            tp,
            base_offset,
            end_offset,
            byte_start: start as u64,
            byte_len: (self.data.len() - start) as u64,
            max_timestamp,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Chunks added so far.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The object's bytes and where each chunk is.
    pub fn finish(mut self) -> (Bytes, Vec<ChunkLocation>) {
        let footer_start = self.data.len();
        for c in &self.chunks {
            let topic = c.tp.topic.as_bytes();
            // Topic names are at most 249 bytes (validated at creation).
            self.data
                .put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
            self.data.put_slice(topic);
            self.data.put_i32(c.tp.partition.0);
            self.data.put_i64(c.base_offset.0);
            self.data.put_i64(c.end_offset.0);
            self.data.put_u64(c.byte_start);
            self.data.put_u64(c.byte_len);
            self.data.put_i64(c.max_timestamp);
        }
        let footer = &self.data[footer_start..];
        let crc = crc32c::crc32c(footer);
        let footer_len = u32::try_from(footer.len()).unwrap_or(u32::MAX);
        self.data.put_u32(footer_len);
        self.data.put_u32(crc);
        self.data.put_slice(MAGIC);
        (self.data.freeze(), self.chunks)
    }
}

/// Reads the footer of a whole object.
pub fn read_footer(object: &[u8]) -> Result<Vec<ChunkLocation>, StorageError> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        reason: reason.to_string(),
    };
    let len = object.len();
    if len < TRAILER_LEN || &object[len - 4..] != MAGIC {
        return Err(corrupt("object does not end with the SHO1 trailer"));
    }
    let footer_len = u32::from_be_bytes(take(&object[len - 12..len - 8])?);
    let crc = u32::from_be_bytes(take(&object[len - 8..len - 4])?);
    let footer_len = usize::try_from(footer_len).map_err(|_| corrupt("footer length"))?;
    let footer_start = (len - TRAILER_LEN)
        .checked_sub(footer_len)
        .ok_or_else(|| corrupt("footer longer than the object"))?;
    let mut footer = &object[footer_start..len - TRAILER_LEN];
    if crc32c::crc32c(footer) != crc {
        return Err(corrupt("footer CRC mismatch"));
    }
    let mut chunks = Vec::new();
    while !footer.is_empty() {
        let topic_len = usize::from(u16::from_be_bytes(take(footer)?));
        let topic_bytes = footer
            .get(2..2 + topic_len)
            .ok_or_else(|| corrupt("truncated footer entry"))?;
        let topic = std::str::from_utf8(topic_bytes)
            .map_err(|_| corrupt("topic name is not UTF-8"))?
            .to_string();
        footer = &footer[2 + topic_len..];
        let fixed = footer
            .get(..44)
            .ok_or_else(|| corrupt("truncated footer entry"))?;
        let chunk = ChunkLocation {
            tp: TopicPartition::new(topic, i32::from_be_bytes(take(fixed)?)),
            base_offset: Offset(i64::from_be_bytes(take(&fixed[4..])?)),
            end_offset: Offset(i64::from_be_bytes(take(&fixed[12..])?)),
            byte_start: u64::from_be_bytes(take(&fixed[20..])?),
            byte_len: u64::from_be_bytes(take(&fixed[28..])?),
            max_timestamp: i64::from_be_bytes(take(&fixed[36..])?),
        };
        if chunk.byte_start + chunk.byte_len > footer_start as u64 {
            return Err(corrupt("chunk extends into the footer"));
        }
        chunks.push(chunk);
        footer = &footer[44..];
    }
    Ok(chunks)
}

fn take<const N: usize>(buf: &[u8]) -> Result<[u8; N], StorageError> {
    buf.get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt {
            reason: "truncated object".to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn footer_round_trips() {
        let mut b = ObjectBuilder::default();
        b.add_chunk(
            TopicPartition::new("a", 0),
            Offset(0),
            Offset(3),
            10,
            [&b"xx"[..], b"x"],
        );
        b.add_chunk(
            TopicPartition::new("bb", 7),
            Offset(5),
            Offset(6),
            20,
            [&b"yy"[..]],
        );
        let (bytes, chunks) = b.finish();
        assert_eq!(read_footer(&bytes).unwrap(), chunks);
        assert_eq!(&bytes[3..5], b"yy");
        let mut broken = bytes.to_vec();
        broken[6] ^= 1;
        assert!(read_footer(&broken).is_err());
        assert!(read_footer(b"SHO1").is_err());
    }

    proptest! {
        #[test]
        fn footer_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut data = data;
            data.extend_from_slice(MAGIC);
            let _ = read_footer(&data);
        }
    }
}
