//! [`IstioObject`]: any one of the supported kinds, with kind/name/namespace helpers.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::{networking, security};

/// Namespace assumed for objects whose `metadata.namespace` is absent or empty.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Declares [`Kind`] and [`IstioObject`] from one list, so the two never disagree.
macro_rules! kinds {
    ($( $kind:ident => $ty:ty, $group:ident, $plural:literal, $as_fn:ident; )+) => {
        /// The kinds this crate understands.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $( $kind, )+
        }

        impl Kind {
            pub const ALL: [Kind; kinds!(@count $($kind)+)] = [ $( Kind::$kind, )+ ];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( Kind::$kind => stringify!($kind), )+
                }
            }

            /// The API group: `networking.istio.io` or `security.istio.io`.
            pub fn group(self) -> &'static str {
                match self {
                    $( Kind::$kind => crate::$group::GROUP, )+
                }
            }

            /// The versions of [`group`](Self::group) the kind is served and read in
            /// (all with one schema); the first, `v1`, is the storage version.
            pub fn versions(self) -> &'static [&'static str] {
                match self {
                    $( Kind::$kind => &crate::$group::ACCEPTED_VERSIONS, )+
                }
            }

            /// The resource name (lowercase plural), e.g. `virtualservices`.
            pub fn plural(self) -> &'static str {
                match self {
                    $( Kind::$kind => $plural, )+
                }
            }
        }

        /// One parsed Istio configuration object.
        ///
        /// Serializes as the wrapped resource (with `apiVersion` `<group>/v1`).
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        #[allow(
            clippy::large_enum_variant,
            reason = "few objects, rarely moved; plain variants keep matching and construction simple"
        )]
        pub enum IstioObject {
            $( $kind($ty), )+
        }

        impl IstioObject {
            pub fn kind(&self) -> Kind {
                match self {
                    $( IstioObject::$kind(_) => Kind::$kind, )+
                }
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $( IstioObject::$kind(o) => &o.metadata, )+
                }
            }

            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $( IstioObject::$kind(o) => &mut o.metadata, )+
                }
            }

            $(
                #[doc = concat!("The object when it is a `", stringify!($kind), "`.")]
                pub fn $as_fn(&self) -> Option<&$ty> {
                    match self {
                        IstioObject::$kind(o) => Some(o),
                        #[allow(unreachable_patterns, reason = "one arm per kind")]
                        _ => None,
                    }
                }
            )+
        }

        $(
            impl From<$ty> for IstioObject {
                fn from(o: $ty) -> Self {
                    IstioObject::$kind(o)
                }
            }
        )+
    };
    (@count $($kind:ident)+) => { 0 $( + kinds!(@one $kind) )+ };
    (@one $kind:ident) => { 1 };
}

kinds! {
    ServiceEntry => networking::ServiceEntry, networking, "serviceentries", as_service_entry;
    DestinationRule => networking::DestinationRule, networking, "destinationrules", as_destination_rule;
    VirtualService => networking::VirtualService, networking, "virtualservices", as_virtual_service;
    Gateway => networking::Gateway, networking, "gateways", as_gateway;
    Sidecar => networking::Sidecar, networking, "sidecars", as_sidecar;
    WorkloadEntry => networking::WorkloadEntry, networking, "workloadentries", as_workload_entry;
    WorkloadGroup => networking::WorkloadGroup, networking, "workloadgroups", as_workload_group;
    PeerAuthentication => security::PeerAuthentication, security, "peerauthentications", as_peer_authentication;
    AuthorizationPolicy => security::AuthorizationPolicy, security, "authorizationpolicies", as_authorization_policy;
    RequestAuthentication => security::RequestAuthentication, security, "requestauthentications", as_request_authentication;
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Kind {
    /// The kinds of an API group.
    pub fn in_group(group: &str) -> impl Iterator<Item = Kind> + '_ {
        Kind::ALL.into_iter().filter(move |k| k.group() == group)
    }
}

/// Error of [`Kind::from_str`]: the name is not a supported kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Parses the exact (case-sensitive) Kubernetes kind name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// Identity of an object: kind, namespace (defaulted) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl IstioObject {
    /// `metadata.name`, or `""` when absent (validation reports a missing name).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    /// `metadata.namespace` as written; `None` when absent or empty.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata()
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
    }

    /// `metadata.namespace`, or `default` when absent or empty.
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace().unwrap_or(default)
    }

    /// `metadata.namespace`, or [`DEFAULT_NAMESPACE`] when absent or empty.
    pub fn namespace_or_default(&self) -> &str {
        self.namespace_or(DEFAULT_NAMESPACE)
    }

    /// Fills in `metadata.namespace` with `default` when it is absent or empty.
    pub fn apply_default_namespace(&mut self, default: &str) {
        if self.namespace().is_none() {
            self.metadata_mut().namespace = Some(default.to_owned());
        }
    }

    /// Kind, namespace (defaulting to [`DEFAULT_NAMESPACE`]) and name.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind(),
            namespace: self.namespace_or_default().to_owned(),
            name: self.name().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networking::{DestinationRule, DestinationRuleSpec, ServiceEntry, ServiceEntrySpec};

    #[test]
    fn kind_round_trips_through_strings() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
        }
        assert!("EnvoyFilter".parse::<Kind>().is_err());
        assert_eq!(Kind::ALL.len(), 10);
        assert_eq!(Kind::AuthorizationPolicy.group(), "security.istio.io");
        assert_eq!(Kind::Gateway.versions(), ["v1", "v1beta1", "v1alpha3"]);
        assert_eq!(Kind::PeerAuthentication.versions(), ["v1", "v1beta1"]);
        assert_eq!(Kind::WorkloadEntry.plural(), "workloadentries");
        assert_eq!(Kind::in_group("security.istio.io").count(), 3);
    }

    #[test]
    fn namespace_defaults() {
        let mut obj: IstioObject = ServiceEntry::new("api", ServiceEntrySpec::default()).into();
        assert_eq!(obj.namespace(), None);
        assert_eq!(obj.namespace_or_default(), "default");
        assert_eq!(obj.namespace_or("prod"), "prod");
        obj.apply_default_namespace("prod");
        assert_eq!(obj.namespace(), Some("prod"));

        let mut dr = DestinationRule::new("reviews", DestinationRuleSpec::default());
        dr.metadata.namespace = Some("shop".into());
        let obj = IstioObject::from(dr);
        assert_eq!(obj.key().to_string(), "DestinationRule shop/reviews");
    }
}
