//! The route variants: each group's virtual hosts joined (in the forms the variants read),
//! and each variant of each route configuration assembled from the header, one joined piece
//! per group of that configuration, and the capture-mode fallback, without building or
//! encoding any virtual host again.

use std::collections::{BTreeMap, BTreeSet};

use capstan_xds::{Parts, Resource, Selector, type_url};
use prost::Message;

use super::{Group, Labels, Segment, SegmentForms, Translator, VirtualHostEntry, form};
use crate::model::Mesh;
use crate::model::service::ExportTo;
use crate::model::sidecar_scope::ScopeViews;
use crate::translate::route::{self, RouteName};
use crate::translate::sidecar::fallback_virtual_host;

/// One variant of a route configuration: its name and whose it is.
pub(super) type RouteVariant = (String, Selector);

impl Translator {
    /// Joins the virtual hosts of `group` again (after some of them changed).
    pub(super) fn rejoin(&mut self, group: Group) {
        let entries: Vec<&VirtualHostEntry> =
            self.group_entries(&group).map(|(_, entry)| entry).collect();
        if entries.is_empty() {
            self.segments.remove(&group);
            return;
        }
        let mut named: BTreeSet<&String> = entries
            .iter()
            .filter_map(|e| match &e.visible {
                ExportTo::Namespaces(set) => Some(set),
                ExportTo::All => None,
            })
            .flatten()
            .collect();
        named.extend(
            entries
                .iter()
                .flat_map(|e| e.by_caller.keys())
                .filter_map(|(caller, _)| caller.namespace.as_ref()),
        );
        let selectors: BTreeSet<&Labels> = entries.iter().flat_map(|e| &e.selectors).collect();
        let mut by_class: BTreeMap<Labels, SegmentForms> =
            route::label_classes(selectors.iter().copied())
                .into_iter()
                .map(|class| {
                    let join = |namespace: Option<&str>| {
                        Parts::join(
                            entries
                                .iter()
                                .filter_map(|e| form(e, &group, namespace, &class)),
                        )
                    };
                    let other = join(None);
                    // Hosts outside the cluster have no namespace whose variant reads them by
                    // bare name.
                    let own = match &group.namespace {
                        Some(ns) => join(Some(ns)),
                        None => other.clone(),
                    };
                    let exported = named
                        .iter()
                        .filter(|ns| group.namespace.as_ref() != Some(**ns))
                        .map(|ns| ((*ns).clone(), join(Some(ns))))
                        .collect();
                    let forms = SegmentForms {
                        own,
                        other,
                        exported,
                    };
                    (class, forms)
                })
                .collect();
        // `label_classes` always yields the empty class.
        let Some(plain) = by_class.remove(&Labels::new()) else {
            self.segments.remove(&group);
            return;
        };
        let selectors = selectors.into_iter().cloned().collect();
        self.segments.insert(
            group,
            Segment {
                selectors,
                plain,
                by_class,
            },
        );
    }

    /// The route variants from the kept virtual hosts, and those that are gone.
    pub(super) fn assemble_routes(
        &mut self,
        mesh: &Mesh,
        views: &ScopeViews,
    ) -> (Vec<(Selector, Resource)>, Vec<RouteVariant>) {
        let variants = self.routes(mesh, views);
        self.dirty_groups.clear();
        let now: BTreeSet<RouteVariant> = variants
            .iter()
            .map(|(s, r)| (r.name().to_string(), s.clone()))
            .collect();
        let gone = self.route_variants.difference(&now).cloned().collect();
        self.route_variants = now;
        (variants, gone)
    }

    fn routes(&mut self, mesh: &Mesh, views: &ScopeViews) -> Vec<(Selector, Resource)> {
        let modes = self.outbound_modes(mesh);
        if self.domain_claims.any_repeated() {
            // Two hosts claim one name: the slow path drops the later claims, as a full
            // build always has (not scoped by Sidecar; docs/traffic.md says so).
            self.scoped_segments.clear();
            let layout = self.options.route_layout();
            let (configs, _) = route::route_configurations(mesh, layout, self.route_names());
            let capture = self.fallbacks.is_some();
            return configs
                .into_iter()
                .filter_map(|(caller, mut config)| {
                    let selector = variant_selector(caller.namespace.as_deref(), &caller.labels);
                    if capture {
                        let mode = modes.for_proxies(&selector);
                        config.virtual_hosts.push(fallback_virtual_host(mode));
                    }
                    let name = config.name.clone();
                    Some((selector, Resource::encode(name, &config)?))
                })
                .collect();
        }
        if !views.is_empty() {
            return self.scoped_routes(mesh, views, &modes);
        }
        self.scoped_segments.clear();
        let classes = self.label_classes();
        let namespaces = self.route_namespaces();
        let mut out = Vec::new();
        for name in self.route_names() {
            let header = self.header(name);
            for &ns in &namespaces {
                for labels in &classes {
                    let selector = variant_selector(ns, labels);
                    let fallback = self.fallback(modes.for_proxies(&selector));
                    let routes = self.assembled_routes(name, &header, ns, labels, fallback);
                    out.push((selector, routes));
                }
            }
        }
        out
    }

    /// The route configurations sidecars get: those with virtual hosts, and any the layout
    /// always has.
    pub(super) fn route_names(&self) -> BTreeSet<RouteName> {
        let layout = self.options.route_layout();
        let mut names: BTreeSet<RouteName> = layout.fixed_routes().iter().copied().collect();
        names.extend(self.segments.keys().map(|g| g.route));
        let bound = self.capture.iter().flat_map(|c| c.bound_ports());
        names.extend(bound.map(|port| layout.route_name(port)));
        names
    }

    /// Route configuration `name` without virtual hosts, encoded.
    pub(super) fn header(&self, name: RouteName) -> Parts {
        let config = route::empty_config(&name.to_string(), self.options.route_layout());
        Parts::leaf(config.encode_to_vec())
    }

    /// The segments of route configuration `name`, in their order in it.
    pub(super) fn segments_of(
        &self,
        name: RouteName,
    ) -> impl Iterator<Item = (&Group, &Segment)> + '_ {
        self.segments
            .range(Group::first_of(name)..)
            .take_while(move |(g, _)| g.route == name)
    }

    /// The label classes of the route variants: the unions of the `sourceLabels` selectors
    /// of every VirtualService some virtual host carries (the empty class first).
    pub(super) fn label_classes(&self) -> Vec<Labels> {
        route::label_classes(self.source_selectors.keys())
    }

    /// The namespaces with a route variant of their own: those with cluster-local hosts or
    /// hosts exported to them by name; and `None`, the variant of every other proxy.
    pub(super) fn route_namespaces(&self) -> BTreeSet<Option<&str>> {
        let mut namespaces = BTreeSet::from([None]);
        for (group, segment) in &self.segments {
            namespaces.extend(group.namespace.as_deref().map(Some));
            let forms = segment.forms(&Labels::new());
            namespaces.extend(forms.exported.keys().map(|ns| Some(ns.as_str())));
        }
        namespaces
    }

    /// The virtual hosts of `group`, in their order in the route configuration.
    pub(super) fn group_entries<'a>(
        &'a self,
        group: &'a Group,
    ) -> impl Iterator<Item = (&'a (String, u32), &'a VirtualHostEntry)> + 'a {
        self.virtual_hosts.get(group).into_iter().flatten()
    }

    /// Route configuration `name` of the proxies of `namespace` (`None`: of a namespace no
    /// host or match names) whose labels include `labels`, from `header` and the joined
    /// segments, ending with `fallback`.
    pub(super) fn assembled_routes(
        &self,
        name: RouteName,
        header: &Parts,
        namespace: Option<&str>,
        labels: &Labels,
        fallback: Option<Parts>,
    ) -> Resource {
        let segments = self.segments_of(name).map(|(group, segment)| {
            let forms = segment.forms(labels);
            match namespace {
                Some(ns) if group.namespace.as_deref() == Some(ns) => forms.own.clone(),
                Some(ns) => forms.exported.get(ns).unwrap_or(&forms.other).clone(),
                None => forms.other.clone(),
            }
        });
        let parts = Parts::join(
            std::iter::once(header.clone())
                .chain(segments)
                .chain(fallback),
        );
        Resource::from_parts(type_url::ROUTE, name.to_string(), parts)
    }
}

/// The selector of the route variant of the sidecars of `namespace` (`None`: any) whose
/// labels include `labels`.
pub(super) fn variant_selector(namespace: Option<&str>, labels: &Labels) -> Selector {
    let mut selector = namespace.map_or_else(Selector::all, Selector::namespace);
    selector.labels = labels.clone();
    selector
}
