//! Starting the CA from its store, and keeping it current: rotation steps of the built-in
//! root, reloads of a plug-in intermediate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use capstan_ca::{
    Authority, CaFiles, CaState, PLUGGED_FILES, ROOT_FILES, RootCa, RotationPolicy, new_root_files,
    rotation_step, state_from_files,
};
use tracing::{debug, info, warn};

use super::{FileStore, StoreError};

/// The built-in root from `store`, created there if the store does not exist yet. Replicas
/// starting together race to create it; the losers read the winner's.
pub async fn start_builtin(
    store: &FileStore,
    trust_domain: &str,
    policy: &RotationPolicy,
) -> Result<Authority, StoreError> {
    // Create-or-read twice at most: a store that vanishes between our create and our read is
    // someone deleting it, not a race to wait out.
    for _ in 0..2 {
        if let Some(stored) = store.read(&ROOT_FILES).await? {
            let state = state_from_files(&stored.files, trust_domain, SystemTime::now())?;
            info!(store = %store.describe(), "CA: using the stored root");
            return Ok(Authority::new(state));
        }
        let empty = CaFiles::named(store.describe(), BTreeMap::new());
        let files = new_root_files(&empty, trust_domain, policy)?;
        if store.create(&files).await? {
            info!(store = %store.describe(), "CA: created a new self-signed root");
            let state = state_from_files(&files, trust_domain, SystemTime::now())?;
            return Ok(Authority::new(state));
        }
        debug!(store = %store.describe(), "CA: another replica created the root first");
    }
    Err(StoreError::Missing(store.describe()))
}

/// Every `interval`: applies the rotation step due (written back only if nobody changed the
/// store meanwhile) and adopts what the store holds, which may be another replica's step.
/// Errors are logged and the current root kept.
pub async fn keep_builtin(
    store: FileStore,
    authority: Arc<Authority>,
    trust_domain: String,
    policy: RotationPolicy,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = builtin_tick(&store, &authority, &trust_domain, &policy).await {
            warn!(store = %store.describe(), %error, "CA: keeping the current root");
        }
    }
}

pub async fn builtin_tick(
    store: &FileStore,
    authority: &Authority,
    trust_domain: &str,
    policy: &RotationPolicy,
) -> Result<(), StoreError> {
    let Some(stored) = store.read(&ROOT_FILES).await? else {
        return Err(StoreError::Missing(store.describe()));
    };
    let now = SystemTime::now();
    let mut files = stored.files;
    if let Some((next, step)) = rotation_step(&files, trust_domain, now, policy)? {
        if !store.replace(&next, stored.version.as_deref()).await? {
            debug!(store = %store.describe(), "CA: another replica rotated first; re-reading next time");
            return Ok(());
        }
        info!(store = %store.describe(), ?step, "CA: root rotation step");
        files = next;
    }
    let state = state_from_files(&files, trust_domain, now)?;
    if differs(&authority.current(), &state) {
        info!(
            store = %store.describe(),
            roots = state.trust_bundle.len(),
            "CA: adopting the stored root and trust bundle"
        );
        authority.set(state);
    }
    Ok(())
}

/// The plug-in intermediate in `store`.
pub async fn start_plugged(store: &FileStore, trust_domain: &str) -> Result<Authority, StoreError> {
    let stored = store
        .read(&PLUGGED_FILES)
        .await?
        .ok_or_else(|| StoreError::Missing(store.describe()))?;
    let signer = RootCa::from_plugged_files(trust_domain, &stored.files)?;
    info!(store = %store.describe(), "CA: using the plug-in intermediate");
    Ok(Authority::new(CaState::new(signer)))
}

/// Every `interval`: re-reads the plug-in files; when they changed and form a valid chain,
/// the new intermediate signs from then on. Files that do not are refused, naming the file
/// or key, and the last good intermediate keeps signing.
pub async fn keep_plugged(
    store: FileStore,
    authority: Arc<Authority>,
    trust_domain: String,
    interval: Duration,
) {
    let mut seen: Option<CaFiles> = None;
    loop {
        tokio::time::sleep(interval).await;
        match plugged_tick(&store, &authority, &trust_domain, &mut seen).await {
            Ok(false) => {}
            Ok(true) => info!(store = %store.describe(), "CA: reloaded the plug-in intermediate"),
            Err(error) => warn!(
                store = %store.describe(),
                %error,
                "CA: plug-in files refused; the last good intermediate keeps signing"
            ),
        }
    }
}

/// Whether the signer was replaced.
pub async fn plugged_tick(
    store: &FileStore,
    authority: &Authority,
    trust_domain: &str,
    seen: &mut Option<CaFiles>,
) -> Result<bool, StoreError> {
    let stored = store
        .read(&PLUGGED_FILES)
        .await?
        .ok_or_else(|| StoreError::Missing(store.describe()))?;
    if seen.as_ref() == Some(&stored.files) {
        return Ok(false);
    }
    // Remember even files that fail, so one broken edit is reported once, not every tick.
    *seen = Some(stored.files.clone());
    let signer = RootCa::from_plugged_files(trust_domain, &stored.files)?;
    if signer.certificate_pem() == authority.current().signer.certificate_pem() {
        return Ok(false);
    }
    authority.set(CaState::new(signer));
    Ok(true)
}

fn differs(current: &CaState, next: &CaState) -> bool {
    current.signer.certificate_pem() != next.signer.certificate_pem()
        || current.trust_bundle != next.trust_bundle
}

#[cfg(test)]
mod tests;
