//! gRPC message framing over an HTTP/2 body: a one-byte compression flag, a big-endian u32
//! length, then the message.
//!
//! [`Deframer`] keeps no buffer while it holds no partial message. A reader that kept its
//! buffer at the largest message it ever read would pin that much memory per stream for the
//! stream's life: an Envoy's first EDS subscription (a thousand names, with its CDS ACK in
//! the same write) is ~25 KiB, repeated across thousands of idle streams. The load generator
//! reads responses with the same type.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;

/// The length prefix: a compression flag and a big-endian u32 length.
pub const PREFIX: usize = 5;

/// Splits a gRPC body into messages.
#[derive(Debug)]
pub struct Deframer {
    buf: BytesMut,
    /// The largest message accepted.
    limit: usize,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl Deframer {
    /// A deframer that fails on a message longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Adds received bytes; appends the messages they complete to `out`, in order.
    pub fn push(&mut self, data: &[u8], out: &mut impl Extend<Bytes>) -> Result<(), Status> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= PREFIX {
            if self.buf[0] != 0 {
                return Err(Status::internal(
                    "compressed gRPC message (none was negotiated)",
                ));
            }
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > self.limit {
                return Err(Status::out_of_range(format!(
                    "message of {len} bytes, more than the {} accepted",
                    self.limit
                )));
            }
            if self.buf.len() < PREFIX + len {
                // Room for the whole message at once, instead of growing step by step.
                self.buf.reserve(PREFIX + len - self.buf.len());
                break;
            }
            self.buf.advance(PREFIX);
            out.extend(std::iter::once(self.buf.split_to(len).freeze()));
        }
        if self.buf.is_empty() {
            // Let the last message own the allocation; keep nothing while idle.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Whether a message has begun but not ended.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes of buffer held (for tests and diagnostics).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// `messages`, each with its length prefix, in one buffer: sent as one HTTP/2 DATA frame,
/// they leave in one write, as an Envoy's ACK and its next request do.
pub fn frame_all(messages: &[Bytes]) -> Bytes {
    let len = messages.iter().map(|m| PREFIX + m.len()).sum();
    let mut buf = BytesMut::with_capacity(len);
    for message in messages {
        put_prefix(&mut buf, message.len());
        buf.put_slice(message);
    }
    buf.freeze()
}

/// Writes the length prefix of an uncompressed message of `len` bytes.
pub fn put_prefix(buf: &mut impl BufMut, len: usize) {
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &'static [u8]) -> Bytes {
        frame_all(&[Bytes::from_static(message)])
    }

    #[test]
    fn messages_split_across_and_within_chunks() {
        let c = Bytes::from(vec![7u8; 40_000]);
        let wire = frame_all(&[Bytes::from_static(b"first"), Bytes::new(), c]);
        for chunk in [1, 3, 5, 16_384, wire.len()] {
            let mut deframer = Deframer::default();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                deframer.push(piece, &mut out).expect("well-formed");
            }
            assert_eq!(out.len(), 3, "chunk size {chunk}");
            assert_eq!(&out[0][..], b"first");
            assert!(out[1].is_empty());
            assert_eq!(out[2].len(), 40_000);
            assert!(!deframer.is_partial());
            assert_eq!(deframer.capacity(), 0, "nothing kept while idle");
        }
    }

    #[test]
    fn partial_compressed_and_oversized_messages() {
        let mut deframer = Deframer::default();
        let mut out = Vec::new();
        let whole = frame(b"abc");
        deframer.push(&whole[..6], &mut out).expect("prefix only");
        assert!(out.is_empty() && deframer.is_partial());
        deframer.push(&whole[6..], &mut out).expect("rest");
        assert_eq!(out, [Bytes::from_static(b"abc")]);
        let mut compressed = frame(b"x").to_vec();
        compressed[0] = 1;
        assert!(Deframer::default().push(&compressed, &mut out).is_err());
        let status = Deframer::with_limit(2)
            .push(&frame(b"abc"), &mut out)
            .expect_err("over the limit");
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            Deframer::with_limit(3)
                .push(&frame(b"abc"), &mut out)
                .is_ok()
        );
    }

    #[test]
    fn frame_all_is_the_frames_in_a_row() {
        let both = frame_all(&[Bytes::from_static(b"ab"), Bytes::new()]);
        assert_eq!(both[..], [&frame(b"ab")[..], &frame(b"")[..]].concat());
        let mut out = Vec::new();
        Deframer::default()
            .push(&both, &mut out)
            .expect("two frames");
        assert_eq!(out, [Bytes::from_static(b"ab"), Bytes::new()]);
    }
}
