//! Host names as Istio compares them: DNS names, so case-insensitive, with `*` and `*.suffix`
//! wildcards. The one host-matching rule for validation, the model and translation.

/// Whether pattern `pattern` matches every name `host` matches: `*` matches everything,
/// `*.example.com` matches `a.example.com` and `*.b.example.com` (not `example.com`); an
/// exact name matches itself. Case is ignored.
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn wildcards_and_case() {
        assert!(covers("*", "anything"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(covers("*.example.com", "*.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("*.Example.com", "api.example.COM"));
        assert!(covers("Reviews.default", "reviews.default"));
        assert!(!covers("a.b", "a.c"));
        // A multi-byte character never splits a comparison.
        assert!(!covers("*.é.com", "a.com"));
    }
}
