//! Istio's host-name rules: short names, FQDNs and the domains a virtual host answers to.
//! Host names are DNS names and so case-insensitive: [`resolve`] lower-cases them, and every
//! comparison of hosts in capstan goes through [`matches`].

/// Expands a short host name the way Istio does: a name without a dot is a Kubernetes
/// service in `namespace`; anything with a dot, and wildcards, are taken as written.
pub fn resolve(host: &str, namespace: &str, domain_suffix: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host.starts_with('*') {
        host
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

/// The names a client may use for `host`, most specific first: the host itself and, for a
/// cluster-local `name.ns.svc.<suffix>`, `name.ns.svc`, `name.ns` and `name`.
pub fn aliases(host: &str, domain_suffix: &str) -> Vec<String> {
    let mut names = vec![host.to_string()];
    if let Some((name, namespace)) = split_local(host, domain_suffix) {
        names.push(format!("{name}.{namespace}.svc"));
        names.push(format!("{name}.{namespace}"));
        names.push(name.to_string());
    }
    names
}

/// The namespace of a cluster-local host `name.namespace.svc.<suffix>`.
pub fn local_namespace<'a>(host: &'a str, domain_suffix: &str) -> Option<&'a str> {
    split_local(host, domain_suffix).map(|(_, namespace)| namespace)
}

/// The name and namespace of a cluster-local host `name.namespace.svc.<suffix>`.
pub fn split_local<'a>(host: &'a str, domain_suffix: &str) -> Option<(&'a str, &'a str)> {
    let local = host.strip_suffix(domain_suffix)?.strip_suffix(".svc.")?;
    let (name, namespace) = local.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((name, namespace))
}

/// Whether `pattern` (a host or a `*.suffix` wildcard, as in a VirtualService) covers `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    capstan_crds::host::covers(pattern, host)
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
    fn namespaces_of_cluster_local_hosts() {
        let ns = |h| local_namespace(h, "cluster.local");
        assert_eq!(ns("reviews.bookinfo.svc.cluster.local"), Some("bookinfo"));
        assert_eq!(ns("api.example.com"), None);
        assert_eq!(ns("a.b.c.svc.cluster.local"), None);
        assert_eq!(ns(".bookinfo.svc.cluster.local"), None);
    }

    #[test]
    fn wildcard_patterns() {
        assert!(matches("*.example.com", "api.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*", "anything"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.c"));
        // DNS names are case-insensitive.
        assert!(matches("*.Example.com", "api.example.COM"));
        assert!(matches("Reviews.default", "reviews.default"));
        assert_eq!(
            resolve("Reviews", "ns", "cluster.local"),
            "reviews.ns.svc.cluster.local"
        );
    }
}
