//! Protobuf maps encoded in key order. prost encodes a `HashMap` field in hash order, which
//! changes from one build to the next: the same config would get other bytes, another
//! version, and a push. Messages with such maps are encoded without them, and the entries
//! appended here by key (protobuf parsers take a message's fields in any order).

use std::collections::BTreeMap;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, message, string};

/// Appends `entries` to an encoded message as its map field `tag` (string keys, message
/// values), in key order.
pub fn append_map<M: Message>(tag: u32, entries: &BTreeMap<String, M>, bytes: &mut Vec<u8>) {
    for (key, value) in entries {
        // A map entry is a message: key (1) and value (2).
        let len = string::encoded_len(1, key) + message::encoded_len(2, value);
        encode_key(tag, WireType::LengthDelimited, bytes);
        encode_varint(len as u64, bytes);
        string::encode(1, key, bytes);
        message::encode(2, value, bytes);
    }
}

/// Appends already encoded `value` as the message field `tag`.
pub fn append_message(tag: u32, value: &[u8], bytes: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, bytes);
    encode_varint(value.len() as u64, bytes);
    bytes.extend_from_slice(value);
}
