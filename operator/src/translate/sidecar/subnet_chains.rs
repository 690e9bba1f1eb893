//! `destinationSubnets` on sidecars: the `tcp` and `tls` routes that hold only for
//! connections to some addresses become filter chains matched by destination, ahead of the
//! chain that takes every other connection, as istiod builds them.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::google::protobuf::UInt32Value;

/// Where one host's connections on a port go, for one set of sidecars.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamChains {
    /// Connections to an address in the subnets (`address/length`), in route order.
    pub by_subnets: Vec<(Vec<String>, Filter)>,
    /// Every other connection.
    pub rest: Filter,
}

impl StreamChains {
    /// A chain per subnet set, named after `base` (the rest's chain) and matching what
    /// `base_match` does too (a TLS host's server name, say), then `rest`'s as `base`.
    pub fn into_chains(self, base: &str, base_match: FilterChainMatch) -> Vec<FilterChain> {
        let mut chains: Vec<FilterChain> = self
            .by_subnets
            .into_iter()
            .map(|(subnets, filter)| subnet_chain(&subnets, filter, base, &base_match))
            .collect();
        let matches_any = base_match == FilterChainMatch::default();
        chains.push(FilterChain {
            name: base.to_string(),
            filter_chain_match: (!matches_any).then_some(base_match),
            filters: vec![self.rest],
            ..Default::default()
        });
        chains
    }
}

/// The chain of `subnets` to `filter`, named after the chain `base` it comes before and
/// matching what `base_match` does too.
pub fn subnet_chain(
    subnets: &[String],
    filter: Filter,
    base: &str,
    base_match: &FilterChainMatch,
) -> FilterChain {
    FilterChain {
        name: format!("{}|{base}", subnets.join(",")),
        filter_chain_match: Some(FilterChainMatch {
            prefix_ranges: prefix_ranges(subnets),
            ..base_match.clone()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// What the subnet chains of one listener (and one server name) claim already: Envoy refuses
/// a listener two of whose chains match one range alike, so each range goes to the first
/// chain that asks for it.
#[derive(Debug, Default)]
pub struct Claimed {
    owners: BTreeMap<String, String>,
    /// The services' CIDR addresses on the listener, by owner: another host's routes cannot
    /// claim them; the owner's own can (its range's chain then follows that route).
    ranges: BTreeMap<String, String>,
}

/// The answer to a claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The range is the claimant's now.
    New,
    /// The claimant's chain has it already (an earlier route of its): this one cannot be
    /// reached there.
    Again,
    /// Another host's chain has it.
    Taken(String),
}

impl Claimed {
    /// With `ranges` (range, host), the services' CIDR addresses on the listener.
    pub fn with_ranges(ranges: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            owners: BTreeMap::new(),
            ranges: ranges.into_iter().collect(),
        }
    }

    pub fn claim(&mut self, subnet: &str, host: &str) -> Claim {
        if let Some(owner) = self.owners.get(subnet) {
            return if owner == host {
                Claim::Again
            } else {
                Claim::Taken(owner.clone())
            };
        }
        if let Some(owner) = self.ranges.get(subnet).filter(|owner| *owner != host) {
            return Claim::Taken(owner.clone());
        }
        self.owners.insert(subnet.to_string(), host.to_string());
        Claim::New
    }
}

/// `subnets` as Envoy's ranges (text that is no range is left out: the model keeps none).
pub fn prefix_ranges(subnets: &[String]) -> Vec<CidrRange> {
    subnets.iter().filter_map(|s| cidr_range(s)).collect()
}

/// `a.b.c.d/n` (or IPv6) as Envoy's range; `None` for text validation refuses.
pub fn cidr_range(text: &str) -> Option<CidrRange> {
    let (address, length) = text.split_once('/')?;
    let address: std::net::IpAddr = address.parse().ok()?;
    let prefix_len: u32 = length.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix_len <= max).then(|| CidrRange {
        address_prefix: address.to_string(),
        prefix_len: Some(UInt32Value { value: prefix_len }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(name: &str) -> Filter {
        Filter {
            name: name.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn subnet_chains_come_first_and_share_the_base_match() {
        let chains = StreamChains {
            by_subnets: vec![(
                vec!["10.1.0.0/16".into(), "10.2.0.7/32".into()],
                filter("a"),
            )],
            rest: filter("rest"),
        };
        let sni = FilterChainMatch {
            server_names: vec!["db.example.com".into()],
            ..Default::default()
        };
        let built = chains.into_chains("outbound|443||db.example.com", sni);
        assert_eq!(built.len(), 2);
        assert_eq!(
            built[0].name,
            "10.1.0.0/16,10.2.0.7/32|outbound|443||db.example.com"
        );
        let first = built[0].filter_chain_match.as_ref().expect("a match");
        assert_eq!(first.server_names, ["db.example.com"]);
        let ranges: Vec<(String, u32)> = first
            .prefix_ranges
            .iter()
            .map(|r| {
                (
                    r.address_prefix.clone(),
                    r.prefix_len.map_or(0, |l| l.value),
                )
            })
            .collect();
        assert_eq!(
            ranges,
            [("10.1.0.0".to_string(), 16), ("10.2.0.7".to_string(), 32)]
        );
        assert_eq!(built[0].filters[0].name, "a");
        let rest = built[1].filter_chain_match.as_ref().expect("the sni");
        assert!(rest.prefix_ranges.is_empty());
        assert_eq!(built[1].filters[0].name, "rest");
    }

    #[test]
    fn a_rest_without_a_match_has_none() {
        let only = StreamChains {
            by_subnets: Vec::new(),
            rest: filter("rest"),
        };
        let built = only.into_chains("x", Default::default());
        assert_eq!(built.len(), 1);
        assert_eq!(built[0].filter_chain_match, None);
    }

    #[test]
    fn each_range_goes_to_the_first_chain_that_claims_it() {
        let ranges = [("10.0.0.0/8".to_string(), "range.example".to_string())];
        let mut claimed = Claimed::with_ranges(ranges);
        assert_eq!(claimed.claim("10.1.0.0/16", "db"), Claim::New);
        assert_eq!(claimed.claim("10.1.0.0/16", "db"), Claim::Again);
        assert_eq!(
            claimed.claim("10.1.0.0/16", "cache"),
            Claim::Taken("db".into())
        );
        assert_eq!(
            claimed.claim("10.0.0.0/8", "db"),
            Claim::Taken("range.example".into())
        );
        // A service's own range goes to its route that names it.
        assert_eq!(claimed.claim("10.0.0.0/8", "range.example"), Claim::New);
        assert_eq!(claimed.claim("10.0.0.0/8", "range.example"), Claim::Again);
    }
}
