//! The CA as the rest of capstan sees it: the signer of the moment and the roots workloads
//! must trust. Reloading plug-in files, renewing an AWS Private CA intermediate and rotating
//! the root each swap the whole state at once; a signing in flight keeps the state it started
//! with, and subscribers (the TLS server certificate, SDS) learn of every swap.

use std::sync::Arc;

use tokio::sync::watch;

use crate::RootCa;

/// What signs now, and what to trust.
#[derive(Debug)]
pub struct CaState {
    pub signer: Arc<RootCa>,
    /// PEM roots workloads must trust: the signer's root first, then any root kept during a
    /// rotation's overlap.
    pub trust_bundle: Vec<String>,
}

impl CaState {
    /// A state trusting only `signer`'s root.
    pub fn new(signer: RootCa) -> Self {
        let trust_bundle = vec![signer.root_pem().to_string()];
        Self {
            signer: Arc::new(signer),
            trust_bundle,
        }
    }
}

/// The current [`CaState`], shared by every part that signs or trusts.
#[derive(Debug)]
pub struct Authority {
    state: watch::Sender<Arc<CaState>>,
}

impl Authority {
    pub fn new(state: CaState) -> Self {
        Self {
            state: watch::Sender::new(Arc::new(state)),
        }
    }

    pub fn current(&self) -> Arc<CaState> {
        Arc::clone(&self.state.borrow())
    }

    /// Replaces the whole state; subscribers are told.
    pub fn set(&self, state: CaState) {
        self.state.send_replace(Arc::new(state));
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CaState>> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_swap_reaches_subscribers_and_later_readers() {
        let day = Duration::from_secs(86_400);
        let first = RootCa::generate("cluster.local", day).unwrap();
        let first_root = first.root_pem().to_string();
        let authority = Authority::new(CaState::new(first));
        let mut changes = authority.subscribe();
        let held = authority.current();

        let second = RootCa::generate("cluster.local", day).unwrap();
        let second_root = second.root_pem().to_string();
        authority.set(CaState::new(second));

        changes.changed().await.unwrap();
        assert_eq!(
            changes.borrow().trust_bundle,
            std::slice::from_ref(&second_root)
        );
        assert_eq!(authority.current().trust_bundle, [second_root]);
        // A signing that started before the swap still has the state it began with.
        assert_eq!(held.trust_bundle, [first_root]);
    }
}
