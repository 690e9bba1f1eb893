//! A listener kept encoded in pieces — what comes before its filter chains, each chain, what
//! comes after — so that a set of sidecars' copy of a shared listener (some of its chains,
//! and its own fallthrough chain) is its pieces written in order, not a copy of every chain
//! encoded again. Protobuf fields concatenate, and prost writes a message's fields in tag
//! order, so the pieces of a whole listener are byte for byte its own encoding: the same
//! resource version as encoding it whole.

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use prost::Message;

/// `Listener.filter_chains`' field number.
const FILTER_CHAINS: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct SplitListener {
    pub name: String,
    /// The fields numbered before `filter_chains` (`name`, `address`).
    head: Bytes,
    /// Every chain, each as a `filter_chains` field, one after another.
    chains: Bytes,
    /// Each chain's name and where its field ends in `chains`.
    ends: Vec<(String, usize)>,
    /// The fields numbered after `filter_chains`.
    tail: Bytes,
}

impl SplitListener {
    pub fn new(mut listener: Listener) -> Self {
        let head = Listener {
            name: listener.name.clone(),
            address: listener.address.take(),
            ..Default::default()
        };
        let name = std::mem::take(&mut listener.name);
        let filter_chains = std::mem::take(&mut listener.filter_chains);
        let mut chains = BytesMut::new();
        let mut ends = Vec::with_capacity(filter_chains.len());
        for chain in &filter_chains {
            chains.put_slice(&chain_field(chain));
            ends.push((chain.name.clone(), chains.len()));
        }
        Self {
            name,
            head: head.encode_to_vec().into(),
            chains: chains.freeze(),
            ends,
            tail: listener.encode_to_vec().into(),
        }
    }

    /// The names of the filter chains, in order.
    pub fn chain_names(&self) -> impl Iterator<Item = &str> {
        self.ends.iter().map(|(name, _)| name.as_str())
    }

    /// The listener's encoding with the chains `seen` marks (in the order of
    /// [`Self::chain_names`]) and then `last` (an encoded [`chain_field`]).
    pub fn encode(&self, seen: &[bool], last: Option<&[u8]>) -> Bytes {
        let len = self.head.len() + self.chains.len() + last.map_or(0, <[u8]>::len);
        let mut out = BytesMut::with_capacity(len + self.tail.len());
        out.put_slice(&self.head);
        let mut start = 0;
        for ((_, end), seen) in self.ends.iter().zip(seen) {
            if *seen {
                out.put_slice(&self.chains[start..*end]);
            }
            start = *end;
        }
        out.put_slice(last.unwrap_or_default());
        out.put_slice(&self.tail);
        out.freeze()
    }
}

/// `chain` encoded as one `filter_chains` field of a listener.
pub(super) fn chain_field(chain: &FilterChain) -> Vec<u8> {
    let mut field = Vec::new();
    prost::encoding::message::encode(FILTER_CHAINS, chain, &mut field);
    field
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, TrafficDirection};
    use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
    use envoy_types::pb::google::protobuf::BoolValue;

    fn chain(name: &str) -> FilterChain {
        FilterChain {
            name: name.to_string(),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![format!("{name}.example.com")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A listener with fields numbered before, after and far after `filter_chains`.
    fn listener(chains: &[&str]) -> Listener {
        Listener {
            name: "0.0.0.0_443".to_string(),
            address: Some(Address {
                address: Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                        SocketAddress {
                            address: "0.0.0.0".to_string(),
                            ..Default::default()
                        },
                    ),
                ),
            }),
            filter_chains: chains.iter().map(|c| chain(c)).collect(),
            use_original_dst: Some(BoolValue { value: false }),
            traffic_direction: TrafficDirection::Outbound as i32,
            stat_prefix: "outbound_443".to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn every_chain_written_is_the_listener_itself() {
        let whole = listener(&["a", "b", "c"]);
        let split = SplitListener::new(whole.clone());
        assert_eq!(split.name, "0.0.0.0_443");
        assert_eq!(split.chain_names().collect::<Vec<_>>(), ["a", "b", "c"]);
        let bytes = split.encode(&[true, true, true], None);
        assert_eq!(bytes.as_ref(), whole.encode_to_vec().as_slice());
    }

    #[test]
    fn the_chains_not_seen_are_left_out_and_the_last_one_added() {
        let split = SplitListener::new(listener(&["a", "b", "c"]));
        let last = chain_field(&chain("fallthrough"));
        let bytes = split.encode(&[true, false, true], Some(&last));
        assert_eq!(
            bytes.as_ref(),
            listener(&["a", "c", "fallthrough"])
                .encode_to_vec()
                .as_slice()
        );
        let none = split.encode(&[false, false, false], None);
        assert_eq!(none.as_ref(), listener(&[]).encode_to_vec().as_slice());
    }
}
