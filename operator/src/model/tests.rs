use capstan_crds::{Kind, parse_single};

use super::*;
use crate::index::{Event, IstioRecord, Record};

fn vs(namespace: &str, name: &str, hosts: &str, gateways: &str) -> Event {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: {hosts}
  gateways: {gateways}
  http: [{{route: [{{destination: {{host: reviews.bookinfo.svc.cluster.local}}}}]}}]
"
    );
    let document = parse_single("t.yaml", &yaml).expect("valid yaml");
    Event::Apply(Record::Istio(IstioRecord::valid(document.object)))
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::VirtualService,
        namespace: namespace.into(),
        name: name.into(),
    }
}

const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";

#[test]
fn a_hosts_virtual_service_is_the_first_exact_one_else_the_first_wildcard() {
    let mut index = Index::new();
    let mut mesh = Mesh::new("cluster.local");
    let apply = |index: &mut Index, mesh: &mut Mesh, event| {
        let changes = index.handle(event);
        mesh.update(index, &changes.objects);
    };
    let chosen = |mesh: &Mesh| {
        mesh.virtual_service_for(REVIEWS)
            .map(|vs| vs.origin.clone())
    };

    apply(
        &mut index,
        &mut mesh,
        vs("web", "wild", "['*.svc.cluster.local']", "[]"),
    );
    assert_eq!(chosen(&mesh), Some(key("web", "wild")));
    // An exact host wins over any wildcard, whatever the names.
    apply(
        &mut index,
        &mut mesh,
        vs("zz", "exact", &format!("[{REVIEWS}]"), "[]"),
    );
    assert_eq!(chosen(&mesh), Some(key("zz", "exact")));
    // Among exact ones, the first by namespace and name.
    apply(
        &mut index,
        &mut mesh,
        vs("bookinfo", "reviews", "[reviews]", "[]"),
    );
    assert_eq!(chosen(&mesh), Some(key("bookinfo", "reviews")));
    // One bound to a gateway only does not route sidecars.
    apply(
        &mut index,
        &mut mesh,
        vs("aa", "edge", &format!("[{REVIEWS}]"), "[ingress]"),
    );
    assert_eq!(chosen(&mesh), Some(key("bookinfo", "reviews")));
    let covering: Vec<ObjectKey> = mesh.virtual_services_covering(REVIEWS).cloned().collect();
    assert_eq!(
        covering,
        vec![
            key("aa", "edge"),
            key("bookinfo", "reviews"),
            key("zz", "exact"),
            key("web", "wild")
        ]
    );
    // Deleted, or moved to another host: the next one takes over.
    apply(
        &mut index,
        &mut mesh,
        Event::Delete(RecordKey::Istio(key("bookinfo", "reviews"))),
    );
    assert_eq!(chosen(&mesh), Some(key("zz", "exact")));
    apply(
        &mut index,
        &mut mesh,
        vs("zz", "exact", "[other.example.com]", "[]"),
    );
    assert_eq!(chosen(&mesh), Some(key("web", "wild")));
    apply(
        &mut index,
        &mut mesh,
        vs("web", "wild", "['*.example.com']", "[]"),
    );
    assert_eq!(chosen(&mesh), None);
}

/// A WorkloadEntry is an endpoint: its change rebuilds the hosts whose selectors its labels
/// met before or meet now (a ServiceEntry's `workloadSelector`, a Kubernetes Service's
/// `selector`), not every selecting host of its namespace.
#[test]
fn a_workload_entry_change_rebuilds_only_the_hosts_its_labels_meet() {
    use crate::index::{KubeService, KubeServicePort, NsName};
    let mut index = Index::new();
    let mut mesh = Mesh::new("cluster.local");
    let service = |name: &str| {
        Event::Apply(Record::Service(KubeService {
            id: NsName::new("vms", name),
            ports: vec![KubeServicePort {
                name: "http".into(),
                port: 8080,
                protocol: None,
                target_port: 8080,
            }],
            headless: false,
            cluster_ips: Vec::new(),
            export_to: Vec::new(),
            external_name: None,
            selector: BTreeMap::from([("app".to_string(), name.to_string())]),
        }))
    };
    let istio = |yaml: &str| {
        let document = parse_single("t.yaml", yaml).expect("valid yaml");
        Event::Apply(Record::Istio(IstioRecord::valid(document.object)))
    };
    let entry = |app: &str, address: &str| {
        istio(&format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: vm-1, namespace: vms}}
spec: {{address: {address}, labels: {{app: {app}}}}}
"
        ))
    };
    let selecting_entry = istio(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: vms}
spec:
  hosts: [ledger.example.com]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ledger}}
",
    );
    for event in [
        service("billing"),
        service("payroll"),
        selecting_entry,
        entry("billing", "10.0.5.1"),
    ] {
        let changes = index.handle(event);
        mesh.update(&index, &changes.objects);
    }
    let mut rebuilt = |event| {
        let changes = index.handle(event);
        let affected = mesh.update(&index, &changes.objects);
        affected.hosts.into_iter().collect::<Vec<_>>()
    };
    assert_eq!(
        rebuilt(entry("billing", "10.0.5.2")),
        ["billing.vms.svc.cluster.local"]
    );
    assert_eq!(
        rebuilt(entry("ledger", "10.0.5.2")),
        ["billing.vms.svc.cluster.local", "ledger.example.com"]
    );
    assert_eq!(
        rebuilt(entry("payroll", "10.0.5.2")),
        ["ledger.example.com", "payroll.vms.svc.cluster.local"]
    );
    assert_eq!(
        rebuilt(Event::Delete(crate::index::RecordKey::Istio(ObjectKey {
            kind: Kind::WorkloadEntry,
            namespace: "vms".into(),
            name: "vm-1".into(),
        }))),
        ["payroll.vms.svc.cluster.local"]
    );
}

/// An egress listener's declared port protocol is reported where a service its hosts name
/// has another kind of protocol on that port (capstan follows the service; istiod would build
/// the listener with the declared one), and the report follows the services as they change.
#[test]
fn an_egress_port_protocol_other_than_a_named_services_is_reported() {
    let mut index = Index::new();
    let mut mesh = Mesh::new("cluster.local");
    let apply = |index: &mut Index, mesh: &mut Mesh, event| {
        let changes = index.handle(event);
        mesh.update(index, &changes.objects);
    };
    let istio = |yaml: &str| {
        let document = parse_single("t.yaml", yaml).expect("valid yaml");
        Event::Apply(Record::Istio(IstioRecord::valid(document.object)))
    };
    let entry = |name: &str, namespace: &str, protocol: &str| {
        istio(&format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local]
  ports: [{{number: 9080, name: p, protocol: {protocol}}}]
  resolution: STATIC
"
        ))
    };
    let sidecar = istio(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress:
  - port: {number: 9080, protocol: TCP, name: tcp}
    hosts: [\"./*\"]
  - hosts: [\"istio-system/*\"]
",
    );
    let reported = |mesh: &Mesh| -> Vec<String> {
        mesh.problems()
            .filter(|p| p.object.kind == Kind::Sidecar)
            .map(|p| format!("{}: {}", p.field, p.message.split(':').next().unwrap_or("")))
            .collect()
    };
    for event in [
        entry("reviews", "bookinfo", "HTTP"),
        entry("db", "bookinfo", "TCP"),
        entry("other", "elsewhere", "HTTP"),
        sidecar,
    ] {
        apply(&mut index, &mut mesh, event);
    }
    let reviews = "spec.egress[0].port.protocol: reviews.bookinfo.svc.cluster.local is HTTP on port 9080, not TCP";
    assert_eq!(reported(&mesh), [reviews]);
    apply(&mut index, &mut mesh, entry("reviews", "bookinfo", "TCP"));
    assert_eq!(reported(&mesh), Vec::<String>::new());
    apply(&mut index, &mut mesh, entry("ratings", "bookinfo", "GRPC"));
    assert_eq!(
        reported(&mesh),
        [
            "spec.egress[0].port.protocol: ratings.bookinfo.svc.cluster.local is GRPC on port 9080, not TCP"
        ]
    );
    apply(
        &mut index,
        &mut mesh,
        Event::Delete(crate::index::RecordKey::Istio(ObjectKey {
            kind: Kind::Sidecar,
            namespace: "bookinfo".into(),
            name: "default".into(),
        })),
    );
    assert_eq!(reported(&mesh), Vec::<String>::new());
}
