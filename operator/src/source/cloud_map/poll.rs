//! One poll of Cloud Map: the configured namespaces' services, `DiscoverInstancesRevision`
//! of each, and a full `DiscoverInstances` only for the services whose revision moved (or
//! that are new); services with a health check also have their instances' health read, since
//! a health change does not move the revision. What changed becomes index events.
//!
//! A poll either completes or changes nothing: on any failed call the last good view stays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::api::{ApiError, CloudMapApi, NamespaceInfo, ServiceInfo};
use super::config::CloudMapConfig;
use super::convert::{self, Instance, ServiceView, Skipped};
use crate::index::{CloudMapService, Event, NsName, Record, RecordKey, Tag};

/// Services read at once: 1,000 services at ~20 ms a call take ~1.3 s a poll, well within
/// Cloud Map's per-account request rates.
const CONCURRENCY: usize = 16;

/// What is known of one Cloud Map service.
#[derive(Debug, Clone)]
struct Known {
    service_id: String,
    health_checked: bool,
    revision: i64,
    /// Shared with the view of the poll before when nothing moved (a quiet poll copies no
    /// instance).
    instances: Arc<Vec<Instance>>,
    /// This poll read new instances or health for it: its record is made again. A quiet
    /// service keeps the record it had.
    changed: bool,
    /// The port it was last served on, kept for when its last instance goes.
    last_port: Option<u32>,
    /// What the index was given for it (`None`: it cannot be served; `problem` says why).
    served: Option<CloudMapService>,
    problem: Option<String>,
    skipped: Vec<Skipped>,
}

/// Calls made in one poll, by operation, for the metrics.
pub type Calls = BTreeMap<&'static str, u64>;

pub struct Poller<A> {
    api: A,
    config: CloudMapConfig,
    known: BTreeMap<NsName, Known>,
    /// The first complete poll is handed over as one listing (a `Reset`).
    listed: bool,
    /// Configured namespaces last found missing, to say so once.
    missing: Vec<String>,
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Poll {
    pub events: Vec<Event>,
    pub calls: Calls,
    /// Services served now.
    pub services: usize,
}

impl<A: CloudMapApi> Poller<A> {
    pub fn new(api: A, config: CloudMapConfig) -> Self {
        Poller {
            api,
            config,
            known: BTreeMap::new(),
            listed: false,
            missing: Vec::new(),
        }
    }

    pub fn config(&self) -> &CloudMapConfig {
        &self.config
    }

    /// Polls once; on success the events bring the index up to date with Cloud Map.
    pub async fn poll(&mut self) -> Result<Poll, (ApiError, Calls)> {
        let mut calls = Calls::new();
        match self.read(&mut calls).await {
            Ok(read) => {
                let events = self.commit(read);
                let services = self.known.values().filter(|k| k.served.is_some()).count();
                Ok(Poll {
                    events,
                    calls,
                    services,
                })
            }
            Err(e) => Err((e, calls)),
        }
    }

    /// Reads what Cloud Map holds now, reusing what is known where the revision says nothing
    /// changed.
    async fn read(&mut self, calls: &mut Calls) -> Result<BTreeMap<NsName, Known>, ApiError> {
        let listed = self.api.namespaces().await.inspect_err(|_| {
            *calls.entry("ListNamespaces").or_default() += 1;
        })?;
        *calls.entry("ListNamespaces").or_default() += listed.pages;
        let namespaces: Vec<_> = listed
            .items
            .into_iter()
            .filter(|ns| self.config.selects(&ns.id, &ns.name))
            .collect();
        self.report_missing(&namespaces);
        let mut services: Vec<(NsName, String, ServiceInfo)> = Vec::new();
        for ns in &namespaces {
            let listed = self.api.services(&ns.id).await.inspect_err(|_| {
                *calls.entry("ListServices").or_default() += 1;
            })?;
            *calls.entry("ListServices").or_default() += listed.pages;
            services.extend(listed.items.into_iter().map(|s| {
                let id = NsName::new(&ns.name, s.name.clone());
                (id, ns.http_name.clone(), s)
            }));
        }
        let known = &self.known;
        let api = &self.api;
        // Shared by the reads in flight, so a failed poll still counts every call it made.
        let counted = Mutex::new(std::mem::take(calls));
        let counted = &counted;
        let read: Result<Vec<(NsName, Known)>, ApiError> = futures::stream::iter(services)
            .map(|(id, http_name, info)| async move {
                let previous = known.get(&id).filter(|k| k.service_id == info.id);
                let known = read_service(api, &http_name, &info, previous, counted).await?;
                Ok::<_, ApiError>((id, known))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await;
        *calls = counted.lock().map(|c| c.clone()).unwrap_or_default();
        Ok(read?.into_iter().collect())
    }

    fn report_missing(&mut self, found: &[NamespaceInfo]) {
        let missing: Vec<String> = self
            .config
            .namespaces
            .iter()
            .filter(|r| {
                !found.iter().any(|ns| {
                    r.id.as_deref() == Some(&ns.id) || r.name.as_deref() == Some(&ns.name)
                })
            })
            .map(|r| r.name.clone().or(r.id.clone()).unwrap_or_default())
            .collect();
        if !missing.is_empty() && missing != self.missing {
            warn!(namespaces = ?missing, "Cloud Map namespaces configured but not found");
        }
        self.missing = missing;
    }

    /// Makes `read` the known view; returns the events that bring the index to it.
    fn commit(&mut self, mut read: BTreeMap<NsName, Known>) -> Vec<Event> {
        for (id, known) in read.iter_mut().filter(|(_, k)| k.changed) {
            let view = ServiceView {
                namespace: &id.namespace,
                name: &id.name,
                health_checked: known.health_checked,
                instances: &known.instances,
                last_port: known.last_port,
            };
            let (record, skipped) = convert::record(&self.config, &view);
            let previous = self.known.get(id);
            match record {
                Ok(record) => {
                    known.last_port = record.ports.first().map(|p| p.port);
                    known.served = Some(record);
                    known.problem = None;
                }
                Err(problem) => {
                    if previous.and_then(|p| p.problem.as_ref()) != Some(&problem) {
                        warn!(service = %id, "Cloud Map service not served: {problem}");
                    }
                    known.problem = Some(problem);
                }
            }
            if previous.map(|p| &p.skipped) != Some(&skipped) {
                for s in &skipped {
                    warn!(service = %id, instance = ?s.instance, "Cloud Map: {}", s.message);
                }
            }
            known.skipped = skipped;
        }
        let mut events = Vec::new();
        if !self.listed {
            let records = read
                .values()
                .filter_map(|k| k.served.clone())
                .map(Record::CloudMap)
                .collect();
            events.push(Event::Reset(vec![Tag::CloudMap], records));
            info!(services = read.len(), "Cloud Map listed");
            self.listed = true;
        } else {
            let gone: BTreeSet<&NsName> = self
                .known
                .iter()
                .filter(|(id, k)| {
                    k.served.is_some() && read.get(*id).is_none_or(|r| r.served.is_none())
                })
                .map(|(id, _)| id)
                .collect();
            events.extend(
                gone.into_iter()
                    .map(|id| Event::Delete(RecordKey::CloudMap(id.clone()))),
            );
            // A service that did not change kept its record: nothing to compare.
            for (id, known) in read.iter().filter(|(_, k)| k.changed) {
                let before = self.known.get(id).and_then(|k| k.served.as_ref());
                if let Some(now) = &known.served
                    && before != Some(now)
                {
                    events.push(Event::Apply(Record::CloudMap(now.clone())));
                }
            }
        }
        self.known = read;
        events
    }
}

/// Reads one service: its revision; its instances when the revision moved or it is new,
/// else the health of its instances when it has a health check.
async fn read_service<A: CloudMapApi>(
    api: &A,
    http_name: &str,
    info: &ServiceInfo,
    previous: Option<&Known>,
    calls: &Mutex<Calls>,
) -> Result<Known, ApiError> {
    let count_n = |op: &'static str, n: u64| {
        if let Ok(mut calls) = calls.lock() {
            *calls.entry(op).or_default() += n;
        }
    };
    let count = |op: &'static str| count_n(op, 1);
    count("DiscoverInstancesRevision");
    let revision = api.revision(http_name, &info.name).await?;
    let mut known = match previous {
        Some(p) if p.revision == revision => Known {
            changed: p.health_checked != info.health_checked,
            ..p.clone()
        },
        _ => {
            count("DiscoverInstances");
            let instances = api.instances(http_name, &info.name).await?;
            return Ok(Known {
                service_id: info.id.clone(),
                health_checked: info.health_checked,
                revision,
                instances: Arc::new(instances),
                changed: true,
                last_port: previous.and_then(|p| p.last_port),
                served: previous.and_then(|p| p.served.clone()),
                problem: previous.and_then(|p| p.problem.clone()),
                skipped: previous.map(|p| p.skipped.clone()).unwrap_or_default(),
            });
        }
    };
    known.health_checked = info.health_checked;
    if info.health_checked && !known.instances.is_empty() {
        let health = api
            .health(&info.id)
            .await
            .inspect_err(|_| count("GetInstancesHealthStatus"))?;
        count_n("GetInstancesHealthStatus", health.pages);
        let moved = |i: &Instance| health.items.get(&i.id).is_some_and(|h| *h != i.health);
        if known.instances.iter().any(moved) {
            for instance in Arc::make_mut(&mut known.instances) {
                if let Some(h) = health.items.get(&instance.id) {
                    instance.health = *h;
                }
            }
            known.changed = true;
        }
    }
    Ok(known)
}

#[cfg(test)]
mod tests;
