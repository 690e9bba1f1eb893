//! A setting each sidecar reads from the `Sidecar` scope in force for it (its outbound
//! traffic policy, its ingress listeners), as the snapshot's variants carry it: one value
//! for everyone, and one per set of sidecars that reads another.

use capstan_xds::{ProxyInfo, Role, Selector};

use super::{Covers, Scopes, SidecarScope};

/// A setting of every sidecar. Only the scopes apart from what their sidecars would read
/// without them are in `scoped`, so a mesh where no `Sidecar` sets it has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerScope<T> {
    pub everyone: T,
    pub scoped: Vec<(Selector, T)>,
}

impl<T> PerScope<T> {
    /// `setting` for every sidecar.
    pub fn everyone(setting: T) -> Self {
        Self {
            everyone: setting,
            scoped: Vec::new(),
        }
    }

    /// The setting of a sidecar with `selector`'s namespace and labels: that of the most
    /// specific listed scope picking it, as the snapshot picks a proxy's variant.
    pub fn for_proxies(&self, selector: &Selector) -> &T {
        let sidecar = ProxyInfo {
            role: Role::Sidecar,
            namespace: selector.namespace.clone(),
            labels: selector.labels.clone(),
            ..ProxyInfo::default()
        };
        self.scoped
            .iter()
            .filter(|(s, _)| s.matches(&sidecar))
            .max_by_key(|(s, _)| s.specificity())
            .map_or(&self.everyone, |(_, setting)| setting)
    }
}

impl Scopes {
    /// The setting `read` takes from each scope in force (`read(None)`: a sidecar without
    /// one).
    pub(crate) fn per_scope<'a, T: PartialEq + Clone>(
        &'a self,
        read: impl Fn(Option<&'a SidecarScope>) -> T,
    ) -> PerScope<T> {
        let (in_force, _) = self.in_force();
        let find = |wanted: &Covers| in_force.iter().find(|(c, _)| c == wanted).map(|(_, s)| *s);
        let everyone = read(find(&Covers::Default));
        let namespace_setting = |ns: &str| match find(&Covers::Namespace(ns.to_string())) {
            Some(scope) => read(Some(scope)),
            None => everyone.clone(),
        };
        let scoped = in_force
            .iter()
            .filter_map(|(covers, scope)| {
                let inherited = match covers {
                    Covers::Default => return None,
                    Covers::Namespace(_) => everyone.clone(),
                    Covers::Workload(ns, _) => namespace_setting(ns),
                };
                let setting = read(Some(scope));
                (setting != inherited).then(|| (covers.selector(), setting))
            })
            .collect();
        PerScope { everyone, scoped }
    }
}
