//! Istio's host-name rules: short names, FQDNs and the domains a virtual host answers to.

/// Expands a short host name the way Istio does: a name without a dot is a Kubernetes
/// service in `namespace`; anything with a dot, and wildcards, are taken as written.
pub fn resolve(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

/// The names a client may use for `host`, most specific first: the host itself and, for a
/// cluster-local `name.ns.svc.<suffix>`, `name.ns.svc`, `name.ns` and `name`.
pub fn aliases(host: &str, domain_suffix: &str) -> Vec<String> {
    let mut names = vec![host.to_string()];
    if let Some(local) = host.strip_suffix(&format!(".svc.{domain_suffix}"))
        && let Some((name, namespace)) = local.split_once('.')
        && !name.is_empty()
        && !namespace.is_empty()
        && !namespace.contains('.')
    {
        names.push(format!("{name}.{namespace}.svc"));
        names.push(format!("{name}.{namespace}"));
        names.push(name.to_string());
    }
    names
}

/// Whether `pattern` (a host or a `*.suffix` wildcard, as in a VirtualService) covers `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_namespace() {
        assert_eq!(
            resolve("reviews", "bookinfo", "cluster.local"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            resolve("reviews.other", "bookinfo", "cluster.local"),
            "reviews.other"
        );
        assert_eq!(
            resolve("*.example.com", "ns", "cluster.local"),
            "*.example.com"
        );
        assert_eq!(resolve("*", "ns", "cluster.local"), "*");
    }

    #[test]
    fn cluster_local_hosts_have_short_aliases() {
        assert_eq!(
            aliases("reviews.bookinfo.svc.cluster.local", "cluster.local"),
            vec![
                "reviews.bookinfo.svc.cluster.local",
                "reviews.bookinfo.svc",
                "reviews.bookinfo",
                "reviews"
            ]
        );
        assert_eq!(
            aliases("api.example.com", "cluster.local"),
            vec!["api.example.com"]
        );
        assert_eq!(
            aliases("a.b.c.svc.cluster.local", "cluster.local"),
            vec!["a.b.c.svc.cluster.local"]
        );
    }

    #[test]
    fn wildcard_patterns() {
        assert!(matches("*.example.com", "api.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*", "anything"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.c"));
    }
}
