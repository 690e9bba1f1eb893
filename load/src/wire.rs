//! A minimal protobuf wire-format reader and writer.
//!
//! The load generator looks at tens of thousands of discovery responses per second on a machine
//! it shares with the server under test, so it does not decode whole messages: it walks the
//! top-level fields of an encoded message and descends only into the few it needs (a name, a
//! port). Writing is the mirror image: requests are assembled from pre-encoded pieces.

use bytes::BufMut;

/// The input is not a well-formed protobuf message (or uses groups, which xDS never does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u8),
    #[error("field {0} is not valid UTF-8")]
    Utf8(u32),
}

/// One field's value, as the wire format carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Length-delimited: a string, bytes, a nested message or a packed repeated field.
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A field number with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn varint(&self) -> Option<u64> {
        match self.value {
            Value::Varint(v) => Some(v),
            _ => None,
        }
    }
}

/// The top-level fields of an encoded message, in wire order. Yields one error and stops on
/// malformed input.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Walks the top-level fields of `message`.
pub fn fields(message: &[u8]) -> Fields<'_> {
    Fields {
        rest: message,
        failed: false,
    }
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first().ok_or(WireError::Truncated)?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn fixed<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], WireError> {
    let bytes = take(buf, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

impl<'a> Fields<'a> {
    fn read(&mut self) -> Result<Field<'a>, WireError> {
        let key = read_varint(&mut self.rest)?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::Truncated)?;
        let value = match (key & 7) as u8 {
            0 => Value::Varint(read_varint(&mut self.rest)?),
            1 => Value::Fixed64(u64::from_le_bytes(fixed::<8>(&mut self.rest)?)),
            2 => {
                let len = read_varint(&mut self.rest)?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
                Value::Bytes(take(&mut self.rest, len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(fixed::<4>(&mut self.rest)?)),
            other => return Err(WireError::WireType(other)),
        };
        Ok(Field { number, value })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let field = self.read();
        self.failed = field.is_err();
        Some(field)
    }
}

/// Every length-delimited field `number` of `message` (a repeated message or string field).
pub fn repeated(message: &[u8], number: u32) -> impl Iterator<Item = Result<&[u8], WireError>> {
    fields(message).filter_map(move |field| match field {
        Ok(f) if f.number == number => f.bytes().map(Ok),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

/// The last length-delimited field `number` of `message` (protobuf's rule for singular fields),
/// or `None` when absent.
pub fn last_bytes(message: &[u8], number: u32) -> Result<Option<&[u8]>, WireError> {
    let mut found = None;
    for field in repeated(message, number) {
        found = Some(field?);
    }
    Ok(found)
}

/// The last string field `number` of `message`; empty when absent (proto3 default).
pub fn string(message: &[u8], number: u32) -> Result<&str, WireError> {
    let bytes = last_bytes(message, number)?.unwrap_or_default();
    std::str::from_utf8(bytes).map_err(|_| WireError::Utf8(number))
}

/// The payload of a length-delimited field as UTF-8.
pub fn utf8(bytes: &[u8], number: u32) -> Result<&str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::Utf8(number))
}

/// Appends a length-delimited field (string, bytes or an encoded message).
pub fn put_bytes(buf: &mut impl BufMut, number: u32, payload: &[u8]) {
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(payload.len() as u64, buf);
    buf.put_slice(payload);
}

/// Appends a string field, omitting it when empty (proto3 default).
pub fn put_string(buf: &mut impl BufMut, number: u32, value: &str) {
    if !value.is_empty() {
        put_bytes(buf, number, value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Node, SocketAddress, socket_address};
    use prost::Message;

    #[test]
    fn walks_fields_of_a_prost_message() {
        let address = SocketAddress {
            address: "10.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
            ipv4_compat: true,
            ..Default::default()
        };
        let bytes = address.encode_to_vec();
        let fields: Vec<Field<'_>> = fields(&bytes).collect::<Result<_, _>>().expect("valid");
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0].number, 2);
        assert_eq!(fields[0].bytes(), Some(&b"10.0.0.1"[..]));
        assert_eq!(fields[1].number, 3);
        assert_eq!(fields[1].varint(), Some(8080));
        assert_eq!(fields[2].number, 6);
        assert_eq!(fields[2].varint(), Some(1));
        assert_eq!(string(&bytes, 2).expect("valid"), "10.0.0.1");
        assert_eq!(
            string(&bytes, 5).expect("valid"),
            "",
            "absent string is empty"
        );
    }

    #[test]
    fn large_varints_and_repeated_strings() {
        let node = Node {
            id: "n".into(),
            client_features: vec!["a".into(), "bb".into(), "c".repeat(300)],
            ..Default::default()
        };
        let bytes = node.encode_to_vec();
        let features: Vec<&[u8]> = repeated(&bytes, 10)
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(features.len(), 3);
        assert_eq!(features[2].len(), 300, "two-byte length prefix");
        let max = u64::MAX;
        let mut buf = Vec::new();
        prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut buf);
        prost::encoding::encode_varint(max, &mut buf);
        let f = fields(&buf).next().expect("one field").expect("valid");
        assert_eq!(f.varint(), Some(max));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let node = Node {
            id: "some-node".into(),
            ..Default::default()
        };
        let bytes = node.encode_to_vec();
        for cut in 1..bytes.len() {
            let truncated = &bytes[..cut];
            assert!(
                fields(truncated).any(|f| f.is_err()),
                "cut at {cut} must fail"
            );
        }
        assert_eq!(
            fields(&[0x0b]).next(),
            Some(Err(WireError::WireType(3))),
            "groups are refused"
        );
        assert_eq!(
            fields(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .next(),
            Some(Err(WireError::VarintTooLong))
        );
        let mut iter = fields(&[0x0a, 0x05, b'a']);
        assert!(iter.next().expect("an item").is_err());
        assert!(iter.next().is_none(), "stops after the first error");
        assert_eq!(string(&[0x0a, 0x01, 0xff], 1), Err(WireError::Utf8(1)));
    }

    #[test]
    fn writer_round_trips_through_prost() {
        let mut buf = Vec::new();
        put_string(&mut buf, 1, "node-1");
        put_string(&mut buf, 2, "");
        put_bytes(&mut buf, 6, b"agent");
        let node = Node::decode(buf.as_slice()).expect("decodes");
        assert_eq!(node.id, "node-1");
        assert_eq!(node.cluster, "");
        assert_eq!(node.user_agent_name, "agent");
    }
}
