//! The mesh's SPIFFE trust domain and the aliases it takes as its own (`trustDomain`,
//! `trustDomainAliases`), and what istiod derives from them: the identities a client accepts
//! from a server, the principals an AuthorizationPolicy names, the trust domains a sidecar
//! accepts clients of.

/// Istio's default trust domain, which AuthorizationPolicies also use to mean "this mesh's".
pub const DEFAULT: &str = "cluster.local";

/// The local trust domain first, then its aliases (none repeated, none empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomains {
    all: Vec<String>,
}

impl Default for TrustDomains {
    fn default() -> Self {
        Self::new(DEFAULT, &[])
    }
}

impl TrustDomains {
    pub fn new(local: &str, aliases: &[String]) -> Self {
        let mut all: Vec<String> = Vec::with_capacity(aliases.len() + 1);
        for domain in std::iter::once(local).chain(aliases.iter().map(String::as_str)) {
            if !domain.is_empty() && !all.iter().any(|d| d == domain) {
                all.push(domain.to_string());
            }
        }
        if all.is_empty() {
            all.push(DEFAULT.to_string());
        }
        Self { all }
    }

    /// The mesh's own trust domain: the one its CA issues identities in.
    pub fn local(&self) -> &str {
        &self.all[0]
    }

    /// The local trust domain and its aliases.
    pub fn all(&self) -> &[String] {
        &self.all
    }

    /// `spiffe://<local>/ns/<namespace>/sa/<account>`.
    pub fn identity(&self, namespace: &str, account: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{account}", self.local())
    }

    /// A SPIFFE id and the same id in each alias (istiod's `ExpandWithTrustDomains`): what a
    /// client accepts from a server running as `id`. Other names are returned alone.
    pub fn expand_identity(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_string()];
        let Some((_, path)) = id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
        else {
            return out;
        };
        for alias in &self.all[1..] {
            let other = format!("spiffe://{alias}/{path}");
            if !out.contains(&other) {
                out.push(other);
            }
        }
        out
    }

    /// An AuthorizationPolicy principal (`<trust domain>/ns/<ns>/sa/<sa>`, no scheme) as the
    /// principals it stands for (istiod's `ReplaceTrustDomainAliases`): one whose trust
    /// domain is this mesh's (the local one, an alias, one a `*` pattern covers, or
    /// `cluster.local`, which policies use to mean "this mesh") stands for the same path in
    /// each of the mesh's trust domains; any other is kept as written, as is one of another
    /// shape or with `*` for its trust domain.
    pub fn principals(&self, principal: &str) -> Vec<String> {
        let parts: Vec<&str> = principal.split('/').collect();
        if parts.len() != 5 || parts[0] == "*" {
            return vec![principal.to_string()];
        }
        let (domain, path) = (parts[0], parts[1..].join("/"));
        let ours = domain == DEFAULT || self.all.iter().any(|d| overlaps(domain, d));
        if !ours {
            return vec![principal.to_string()];
        }
        let mut out: Vec<String> = Vec::with_capacity(self.all.len());
        for d in &self.all {
            // A `*suffix` domain covering this one already names it as written.
            let named = match domain.strip_prefix('*') {
                Some(suffix) => d.ends_with(suffix),
                None => false,
            };
            let principal = if named {
                principal.to_string()
            } else {
                format!("{d}/{path}")
            };
            if !out.contains(&principal) {
                out.push(principal);
            }
        }
        out
    }

    /// An AuthorizationPolicy `trustDomains` value as the trust domains it stands for
    /// (istiod's `ExpandTrustDomainAliases`): the local one or an alias stands for all of
    /// them; any other value is kept.
    pub fn domains(&self, value: &str) -> Vec<String> {
        if self.all.iter().any(|d| d == value) {
            self.all.clone()
        } else {
            vec![value.to_string()]
        }
    }
}

/// istiod's `stringMatch` of two trust domains, either of which may be a `prefix*` or
/// `*suffix` pattern.
fn overlaps(a: &str, b: &str) -> bool {
    let covers = |pattern: &str, name: &str| {
        pattern == name
            || pattern
                .strip_suffix('*')
                .is_some_and(|p| name.starts_with(p))
            || pattern.strip_prefix('*').is_some_and(|s| name.ends_with(s))
    };
    covers(a, b) || covers(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrating() -> TrustDomains {
        TrustDomains::new("new.example", &["old.example".into(), "new.example".into()])
    }

    #[test]
    fn the_local_domain_comes_first_and_nothing_twice() {
        assert_eq!(migrating().all(), ["new.example", "old.example"]);
        assert_eq!(TrustDomains::new("", &[]).local(), DEFAULT);
        assert_eq!(
            TrustDomains::default().identity("shop", "buyer"),
            "spiffe://cluster.local/ns/shop/sa/buyer"
        );
    }

    #[test]
    fn a_server_identity_is_accepted_in_every_alias() {
        assert_eq!(
            migrating().expand_identity("spiffe://new.example/ns/shop/sa/buyer"),
            [
                "spiffe://new.example/ns/shop/sa/buyer",
                "spiffe://old.example/ns/shop/sa/buyer"
            ]
        );
        assert_eq!(
            TrustDomains::default().expand_identity("spiffe://cluster.local/ns/a/sa/b"),
            ["spiffe://cluster.local/ns/a/sa/b"]
        );
        assert_eq!(
            migrating().expand_identity("api.example.com"),
            ["api.example.com"]
        );
    }

    #[test]
    fn principals_of_this_mesh_name_every_trust_domain_of_it() {
        let domains = TrustDomains::new("example.org", &[]);
        assert_eq!(
            domains.principals("cluster.local/ns/shop/sa/buyer"),
            ["example.org/ns/shop/sa/buyer"],
            "cluster.local means this mesh"
        );
        assert_eq!(
            migrating().principals("old.example/ns/shop/sa/buyer"),
            [
                "new.example/ns/shop/sa/buyer",
                "old.example/ns/shop/sa/buyer"
            ]
        );
        assert_eq!(
            domains.principals("cluster.local/ns/shop/sa/*"),
            ["example.org/ns/shop/sa/*"]
        );
        assert_eq!(
            migrating().principals("*.example/ns/shop/sa/buyer"),
            ["*.example/ns/shop/sa/buyer"],
            "a pattern covering every trust domain of the mesh is kept"
        );
        for kept in [
            "other.example/ns/shop/sa/buyer",
            "*",
            "*/ns/shop/sa/buyer",
            "cluster.local/ns/shop",
            "*.other/ns/shop/sa/buyer",
        ] {
            assert_eq!(domains.principals(kept), [kept], "{kept}");
        }
    }

    #[test]
    fn a_trust_domain_value_of_this_mesh_names_its_aliases_too() {
        assert_eq!(
            migrating().domains("old.example"),
            ["new.example", "old.example"]
        );
        assert_eq!(migrating().domains("other.example"), ["other.example"]);
    }
}
