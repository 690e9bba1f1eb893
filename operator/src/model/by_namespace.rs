//! Policies kept by namespace, then by key: what security kinds look up per workload (its
//! namespace's and the root namespace's).

use std::collections::BTreeMap;

use capstan_crds::ObjectKey;

#[derive(Debug, Clone)]
pub struct ByNamespace<T> {
    map: BTreeMap<String, BTreeMap<ObjectKey, T>>,
}

impl<T> Default for ByNamespace<T> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
}

impl<T> ByNamespace<T> {
    pub fn insert(&mut self, key: &ObjectKey, value: T) {
        self.map
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.clone(), value);
    }

    /// Forgets `key`'s value, returning it.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<T> {
        let values = self.map.get_mut(&key.namespace)?;
        let removed = values.remove(key);
        if values.is_empty() {
            self.map.remove(&key.namespace);
        }
        removed
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The values of `namespace`, by key.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = &T> {
        self.map
            .get(namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// The values a workload of `namespace` reads: the root namespace's (mesh-wide), then its
    /// own namespace's, each by key.
    pub fn for_workload_in<'a>(
        &'a self,
        root_namespace: &str,
        namespace: &str,
    ) -> impl Iterator<Item = &'a T> + use<'a, T> {
        let root = self.map.get(root_namespace);
        let own = (namespace != root_namespace)
            .then(|| self.map.get(namespace))
            .flatten();
        root.into_iter().chain(own).flat_map(BTreeMap::values)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &T)> {
        self.map.values().flat_map(BTreeMap::iter)
    }
}
