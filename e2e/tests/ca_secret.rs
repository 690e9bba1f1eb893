//! The CA's Secrets on a real kube-apiserver, written and read as capstan's ServiceAccount
//! (so its RBAC is exercised): replicas share one built-in root and its rotation steps; a
//! plug-in intermediate in `cacerts` is reloaded when the Secret changes, and a broken change
//! keeps the last good one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use capstan::ca_store::{
    BUILTIN_SECRET, FileStore, PLUGGED_SECRET, SecretStore, builtin_tick, plugged_tick,
    start_builtin, start_plugged,
};
use capstan_ca::{
    BUNDLE_FILE, CERT_FILE, CHAIN_FILE, KEY_FILE, NEXT_CERT_FILE, ROOT_FILE, RotationPolicy,
};
use capstan_e2e::kube::KubeCluster;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

const DAY: Duration = Duration::from_secs(86_400);

async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn policy(grace: f64) -> RotationPolicy {
    RotationPolicy {
        validity: 3650 * DAY,
        grace,
        announce: DAY,
        algorithm: capstan_ca::KeyAlgorithm::EcdsaP256,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_root_and_its_rotation() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let capstan = client(kube.capstan_kubeconfig()).await?;
    let store = || {
        FileStore::Secret(Box::new(SecretStore::new(
            capstan.clone(),
            "istio-system",
            BUILTIN_SECRET,
        )))
    };

    // Two replicas start at once: one creates the root, the other reads the winner's.
    let (store_a, store_b, starting) = (store(), store(), policy(0.2));
    let (a, b) = tokio::join!(
        start_builtin(&store_a, "cluster.local", &starting),
        start_builtin(&store_b, "cluster.local", &starting),
    );
    let (a, b) = (Arc::new(a?), Arc::new(b?));
    ensure!(
        a.current().signer.certificate_pem() == b.current().signer.certificate_pem(),
        "the replicas hold different roots"
    );
    let secrets: Api<Secret> = Api::namespaced(capstan.clone(), "istio-system");
    let secret = secrets.get(BUILTIN_SECRET).await?;
    ensure!(
        secret.type_.as_deref() == Some("istio.io/ca-root"),
        "{:?}",
        secret.type_
    );
    let data = secret.data.context("no data")?;
    for key in [CERT_FILE, KEY_FILE, BUNDLE_FILE] {
        ensure!(data.contains_key(key), "istio-ca-secret lacks {key}");
    }

    // Replica a finds a rotation due (grace 1.0: always) and writes the announcement; b,
    // whose policy finds nothing due, adopts it on its next round.
    let old = a.current().signer.certificate_pem().to_string();
    builtin_tick(&store(), &a, "cluster.local", &policy(1.0)).await?;
    ensure!(
        a.current().trust_bundle.len() == 2,
        "a did not announce a next root"
    );
    ensure!(
        a.current().signer.certificate_pem() == old,
        "announcing must not switch"
    );
    builtin_tick(&store(), &b, "cluster.local", &policy(0.2)).await?;
    ensure!(
        b.current().trust_bundle == a.current().trust_bundle,
        "b did not adopt a's bundle"
    );
    let stored = secrets.get(BUILTIN_SECRET).await?.data.context("no data")?;
    ensure!(
        stored.contains_key(NEXT_CERT_FILE),
        "the next root is not stored"
    );

    // A write from a stale read loses to the newer one instead of overwriting it.
    let stale = store()
        .read(&capstan_ca::ROOT_FILES)
        .await?
        .context("no store")?;
    builtin_tick(&store(), &a, "cluster.local", &policy(0.2)).await?;
    let admin: Api<Secret> =
        Api::namespaced(client(kube.admin_kubeconfig()).await?, "istio-system");
    admin
        .patch(
            BUILTIN_SECRET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"labels": {"touched": "yes"}}}),
            ),
        )
        .await
        .context("another writer touching istio-ca-secret")?;
    ensure!(
        !store()
            .replace(&stale.files, stale.version.as_deref())
            .await?,
        "a replace from a stale resourceVersion succeeded"
    );
    Ok(())
}

fn secret_data(dir: &std::path::Path) -> anyhow::Result<BTreeMap<String, ByteString>> {
    let mut data = BTreeMap::new();
    for name in [CERT_FILE, KEY_FILE, CHAIN_FILE, ROOT_FILE] {
        data.insert(name.to_string(), ByteString(std::fs::read(dir.join(name))?));
    }
    Ok(data)
}

/// An operator's PKI in the `cacerts` layout: a new root and an intermediate it signed.
fn write_cacerts(dir: &std::path::Path) -> anyhow::Result<String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_params = || {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    };
    let root_key = KeyPair::generate()?;
    let root = ca_params().self_signed(&root_key)?;
    let issuer = Issuer::new(ca_params(), root_key);
    let key = KeyPair::generate()?;
    let intermediate = ca_params().signed_by(&key, &issuer)?;
    std::fs::write(dir.join(CERT_FILE), intermediate.pem())?;
    std::fs::write(dir.join(KEY_FILE), key.serialize_pem())?;
    std::fs::write(dir.join(CHAIN_FILE), intermediate.pem())?;
    std::fs::write(dir.join(ROOT_FILE), root.pem())?;
    Ok(root.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_cacerts_secret_is_reloaded_and_a_broken_one_refused() -> anyhow::Result<()> {
    let kube = KubeCluster::shared().await?;
    let admin: Api<Secret> =
        Api::namespaced(client(kube.admin_kubeconfig()).await?, "istio-system");
    let capstan = client(kube.capstan_kubeconfig()).await?;
    let dir = tempfile::tempdir()?;
    let put = |data: BTreeMap<String, ByteString>| Secret {
        metadata: ObjectMeta {
            name: Some(PLUGGED_SECRET.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };

    write_cacerts(dir.path())?;
    admin
        .create(&PostParams::default(), &put(secret_data(dir.path())?))
        .await?;
    let store = FileStore::Secret(Box::new(SecretStore::new(
        capstan,
        "istio-system",
        PLUGGED_SECRET,
    )));
    let authority = start_plugged(&store, "cluster.local").await?;
    let mut seen = None;
    ensure!(!plugged_tick(&store, &authority, "cluster.local", &mut seen).await?);

    // The operator swaps in an intermediate from a new root.
    let new_root = write_cacerts(dir.path())?;
    let mut secret = admin.get(PLUGGED_SECRET).await?;
    secret.data = Some(secret_data(dir.path())?);
    admin
        .replace(PLUGGED_SECRET, &PostParams::default(), &secret)
        .await?;
    ensure!(
        plugged_tick(&store, &authority, "cluster.local", &mut seen).await?,
        "not reloaded"
    );
    ensure!(
        authority.current().trust_bundle == [new_root.clone()],
        "the new root is not trusted"
    );
    let good = authority.current().signer.certificate_pem().to_string();

    // A broken edit: the root no longer signs the chain.
    let mut secret = admin.get(PLUGGED_SECRET).await?;
    let mut data = secret.data.take().context("no data")?;
    let (_, stray) = {
        let other = tempfile::tempdir()?;
        let root = write_cacerts(other.path())?;
        (other, root)
    };
    data.insert(ROOT_FILE.into(), ByteString(stray.into_bytes()));
    secret.data = Some(data);
    admin
        .replace(PLUGGED_SECRET, &PostParams::default(), &secret)
        .await?;
    let err = plugged_tick(&store, &authority, "cluster.local", &mut seen)
        .await
        .err()
        .context("a broken chain was accepted")?;
    ensure!(
        err.to_string()
            .contains("Secret istio-system/cacerts key cert-chain.pem"),
        "the error does not name the Secret and key: {err}"
    );
    ensure!(
        authority.current().signer.certificate_pem() == good,
        "the last good signer was dropped"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_bundle_reaches_every_namespace_and_follows_changes() -> anyhow::Result<()> {
    use capstan::ca_store::{ROOTS_CONFIGMAP, ROOTS_KEY, publish_roots};
    use capstan_ca::{Authority, CaState, RootCa};
    use k8s_openapi::api::core::v1::ConfigMap;

    let kube = KubeCluster::shared().await?;
    let admin = client(kube.admin_kubeconfig()).await?;
    let before = kube.create_namespace("roots-before").await?;
    let first = RootCa::generate("cluster.local", DAY)?;
    let first_root = first.root_pem().to_string();
    let authority = Arc::new(Authority::new(CaState::new(first)));
    // As capstan's ServiceAccount: its RBAC must allow exactly this.
    let task = tokio::spawn(publish_roots(
        client(kube.capstan_kubeconfig()).await?,
        authority.clone(),
    ));

    let roots_in = |ns: String| {
        let api: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
        async move {
            let map = api.get_opt(ROOTS_CONFIGMAP).await?;
            anyhow::Ok(
                map.and_then(|m| m.data)
                    .and_then(|mut d| d.remove(ROOTS_KEY)),
            )
        }
    };
    let wait_for = |ns: String, want: String| {
        let roots_in = &roots_in;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let got = roots_in(ns.clone()).await?;
                if got.as_deref() == Some(want.as_str()) {
                    return anyhow::Ok(());
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "{ns}/{ROOTS_CONFIGMAP} holds {got:?}, not the bundle"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // A namespace that existed, and one made afterwards, both get the bundle.
    wait_for(before.clone(), first_root.clone()).await?;
    let after = kube.create_namespace("roots-after").await?;
    wait_for(after.clone(), first_root.clone()).await?;

    // A rotation's announced bundle (two roots) reaches both.
    let next = RootCa::generate("cluster.local", DAY)?;
    let next_root = next.root_pem().to_string();
    let mut state = CaState::new(next);
    state.trust_bundle.push(first_root.clone());
    authority.set(state);
    let both = format!("{}\n{}\n", next_root.trim_end(), first_root.trim_end());
    wait_for(before, both.clone()).await?;
    wait_for(after, both).await?;
    task.abort();
    Ok(())
}
