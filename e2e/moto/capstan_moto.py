"""moto 5.2.5 serving AWS Private CA and AWS Cloud Map (servicediscovery) on loopback, patched
where its backends differ from AWS in ways capstan depends on, with fault injection for the e2e
tests.

Usage: capstan_moto.py --port PORT   (always binds 127.0.0.1)

What the patch changes (docs/ca-pca.md, "Where moto differs from AWS", lists each):
  - CA keys follow CertificateAuthorityConfiguration.KeyAlgorithm (stock: always RSA-2048).
  - IssueCertificate honours SigningAlgorithm (hash; family must match the CA key) and
    Validity (DAYS, MONTHS, YEARS, ABSOLUTE, END_DATE), backdates notBefore by 60 minutes
    as AWS does, and refuses an end past the CA certificate's own.
  - SubordinateCACertificate_PathLen{0..3}/V1 give CA:TRUE with that pathlen, keyCertSign and
    cRLSign (stock: no extensions at all).
  - A CSR that does not parse or whose signature is wrong is a 400 MalformedCSRException
    (stock: HTTP 500, which SDKs retry).
  - GetCertificate's CertificateChain runs up to the root (stock: the issuing CA only).

What the Cloud Map patch changes (stock moto in parentheses):
  - RegisterInstance with an existing instance id updates that instance: its attributes are
    replaced, its health kept (stock: a second instance with the same id is appended).
  - InstancesRevision is one increasing number per service, bumped by every RegisterInstance
    and DeregisterInstance, never by health changes; DiscoverInstances and
    DiscoverInstancesRevision answer the same one (stock: the sum of per-instance counters of
    the instances returned, which goes down on deregistration and differs between the two
    calls when DiscoverInstances filters).
  - Instances of a service without any health check config are UNKNOWN in DiscoverInstances and
    GetInstancesHealthStatus, and DiscoverInstances ignores its HealthStatus filter for them
    (stock: HEALTHY, filter applied).
  - UpdateInstanceCustomHealthStatus answers CustomHealthNotFound unless the service has a
    HealthCheckCustomConfig (stock: any service).
  - AWS_INIT_HEALTH_STATUS sets a new instance's initial custom health (stock: ignored).
  - ListServices honours Filters (NAMESPACE_ID, RESOURCE_OWNER) and ListNamespaces Filters
    (TYPE, NAME, HTTP_NAME, RESOURCE_OWNER); both page with MaxResults (default 100) and
    NextToken, taking the page before filtering as AWS documents, and report InstanceCount /
    ServiceCount (stock: no filters, no paging, no counts).
  - DiscoverInstances, ListInstances and GetInstancesHealthStatus return at most 100 entries
    when MaxResults is omitted (stock: all).
  - DNS namespaces have Properties.HttpProperties.HttpName = Name and DiscoverInstances looks
    namespaces up by HttpName (stock: no HttpName, looked up by Name).
  - CreateService answers NamespaceNotFound for an unknown namespace and ServiceAlreadyExists
    for a name already in the namespace (stock: creates it anyway).
  - DeleteService answers ServiceNotFound / ResourceInUse (instances left); DeleteNamespace
    answers ResourceInUse while it has services (stock: deletes regardless, silently).

Left as stock moto has it: every operation (and a custom health change, ~30 s on AWS) takes
effect at once; DiscoverInstances keeps registration order (AWS shuffles); one private DNS
namespace per VPC id; not-found and in-use errors are HTTP 400 (AWS: 404, 409).
All servicediscovery calls, DiscoverInstances included, reach this one port: moto's dispatcher
picks the backend from the SigV4 credential scope (`.../servicediscovery/aws4_request`), not
from the Host header (the SDK's `data-` host prefix still has to be undone client-side, as
the name `data-127.0.0.1` does not resolve).

Faults, for tests: from the environment at start, or `POST /capstan-moto/faults` with a JSON
object of the same keys in lower case (`GET` shows them and call counters: issue, throttled,
get, in_progress, ca_certificate; sd, the servicediscovery calls per operation, throttled ones
included; sd_throttled). `{"reset_counts": true}` in a POST zeroes every counter.
  MOTO_PCA_PENDING_POLLS=N    each new certificate answers RequestInProgressException to its
                              first N GetCertificate calls
  MOTO_PCA_THROTTLE_ISSUES=N  the next N IssueCertificate calls answer ThrottlingException
                              (-1: all of them, until changed)
  MOTO_PCA_CHAIN_WITHOUT_ROOT=1  GetCertificate's chain stops below the root
  MOTO_SD_THROTTLE=N          the next N servicediscovery calls, any operation (or only those
                              POSTed as `sd_throttle_ops`, a list of names), answer HTTP 400
                              ThrottlingException (-1: all of them, until changed)
"""

import argparse
import base64
import datetime
import itertools
import json
import os
import sys
import threading

import moto

REQUIRED_MOTO = "5.2.5"
if moto.__version__ != REQUIRED_MOTO:
    sys.exit(
        f"capstan_moto: moto {moto.__version__} installed, {REQUIRED_MOTO} required "
        "(the patch depends on its internals); run scripts/tools.sh"
    )

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from moto.acmpca import exceptions as pca_errors  # noqa: E402
from moto.acmpca import models, responses  # noqa: E402
from moto.core.exceptions import JsonRESTError  # noqa: E402
from moto.moto_api._internal import mock_random  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.servicediscovery import exceptions as sd_errors  # noqa: E402
from moto.servicediscovery import models as sd_models  # noqa: E402
from moto.servicediscovery import responses as sd_responses  # noqa: E402
from werkzeug.serving import run_simple  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

ROOT_TEMPLATE = "arn:aws:acm-pca:::template/RootCACertificate/V1"
SUBORDINATE_PREFIX = "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen"
# AWS backdates notBefore to absorb clock skew between systems.
BACKDATE = datetime.timedelta(minutes=60)


class Faults:
    """Fault settings and call counters, shared by the server's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending_polls = int(os.environ.get("MOTO_PCA_PENDING_POLLS", "0"))
        self.throttle_issues = int(os.environ.get("MOTO_PCA_THROTTLE_ISSUES", "0"))
        self.chain_without_root = os.environ.get("MOTO_PCA_CHAIN_WITHOUT_ROOT") == "1"
        self.sd_throttle = int(os.environ.get("MOTO_SD_THROTTLE", "0"))
        # Only these operations are throttled (empty: every operation).
        self.sd_throttle_ops: list[str] = []
        self.counts = self.zero_counts()
        # servicediscovery calls per operation (the X-Amz-Target suffix).
        self.sd_counts: dict[str, int] = {}
        # Per certificate ARN: GetCertificate calls still to answer "in progress".
        self.pending: dict[str, int] = {}

    @staticmethod
    def zero_counts() -> dict:
        return {
            "issue": 0, "throttled": 0, "get": 0, "in_progress": 0, "ca_certificate": 0,
            "sd_throttled": 0,
        }

    def update(self, settings: dict) -> None:
        with self.lock:
            for key in ("pending_polls", "throttle_issues", "sd_throttle"):
                if key in settings:
                    setattr(self, key, int(settings[key]))
            if "sd_throttle_ops" in settings:
                self.sd_throttle_ops = [str(op) for op in settings["sd_throttle_ops"]]
            if "chain_without_root" in settings:
                self.chain_without_root = bool(settings["chain_without_root"])
            if settings.get("reset_counts"):
                self.counts = self.zero_counts()
                self.sd_counts = {}

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "pending_polls": self.pending_polls,
                "throttle_issues": self.throttle_issues,
                "chain_without_root": self.chain_without_root,
                "sd_throttle": self.sd_throttle,
                "sd_throttle_ops": list(self.sd_throttle_ops),
                "counts": {**self.counts, "sd": dict(self.sd_counts)},
            }

    def throttle_sd(self, operation: str) -> bool:
        """Counts a servicediscovery call; True when it is to be throttled."""
        with self.lock:
            self.sd_counts[operation] = self.sd_counts.get(operation, 0) + 1
            if self.sd_throttle == 0:
                return False
            if self.sd_throttle_ops and operation not in self.sd_throttle_ops:
                return False
            if self.sd_throttle > 0:
                self.sd_throttle -= 1
            self.counts["sd_throttled"] += 1
            return True

    def throttle_issue(self) -> bool:
        with self.lock:
            self.counts["issue"] += 1
            if self.throttle_issues == 0:
                return False
            if self.throttle_issues > 0:
                self.throttle_issues -= 1
            self.counts["throttled"] += 1
            return True

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def issued(self, cert_arn: str) -> None:
        with self.lock:
            self.pending[cert_arn] = self.pending_polls

    def still_pending(self, cert_arn: str) -> bool:
        with self.lock:
            self.counts["get"] += 1
            left = self.pending.get(cert_arn, 0)
            if left <= 0:
                return False
            self.pending[cert_arn] = left - 1
            self.counts["in_progress"] += 1
            return True


FAULTS = Faults()


class ThrottlingException(JsonRESTError):
    code = 400

    def __init__(self) -> None:
        super().__init__("ThrottlingException", "Rate exceeded")


class MalformedCSRException(JsonRESTError):
    code = 400

    def __init__(self, why: str) -> None:
        super().__init__("MalformedCSRException", f"The certificate signing request is invalid: {why}")


class InvalidArgsException(JsonRESTError):
    code = 400

    def __init__(self, why: str) -> None:
        super().__init__("InvalidArgsException", why)


# --- CA keys -------------------------------------------------------------------------------

def new_key(key_algorithm: str):
    if key_algorithm == "EC_prime256v1":
        return ec.generate_private_key(ec.SECP256R1())
    if key_algorithm == "EC_secp384r1":
        return ec.generate_private_key(ec.SECP384R1())
    if key_algorithm.startswith("RSA_"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_algorithm[4:]))
    raise InvalidArgsException(f"unsupported KeyAlgorithm {key_algorithm}")


_stock_ca_init = models.CertificateAuthority.__init__


def ca_init(self, *args, **kwargs) -> None:
    _stock_ca_init(self, *args, **kwargs)
    algorithm = self.certificate_authority_configuration.get("KeyAlgorithm", "RSA_2048")
    # Replaces the RSA-2048 key stock moto always makes, encrypted the same way.
    self.private_bytes = new_key(algorithm).private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.BestAvailableEncryption(self.password),
    )


# --- IssueCertificate ------------------------------------------------------------------------

def hash_for(signing_algorithm: str | None, key) -> hashes.HashAlgorithm:
    algorithm = signing_algorithm or (
        "SHA256WITHECDSA" if isinstance(key, ec.EllipticCurvePrivateKey) else "SHA256WITHRSA"
    )
    wants_ec = algorithm.endswith("WITHECDSA")
    if wants_ec != isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgsException(
            f"SigningAlgorithm {algorithm} does not match the CA's key algorithm"
        )
    for name, digest in (("SHA256", hashes.SHA256()), ("SHA384", hashes.SHA384()), ("SHA512", hashes.SHA512())):
        if algorithm.startswith(name):
            return digest
    raise InvalidArgsException(f"unsupported SigningAlgorithm {algorithm}")


def not_after_for(validity: dict | None, now: datetime.datetime) -> datetime.datetime:
    if not validity:
        raise InvalidArgsException("Validity is required")
    kind, value = validity.get("Type"), int(validity.get("Value", 0))
    if value <= 0:
        raise InvalidArgsException("Validity.Value must be positive")
    if kind == "DAYS":
        return now + datetime.timedelta(days=value)
    if kind == "MONTHS":
        return now + datetime.timedelta(days=30 * value)
    if kind == "YEARS":
        return now + datetime.timedelta(days=365 * value)
    if kind == "ABSOLUTE":
        return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc)
    if kind == "END_DATE":
        text = str(value)
        fmt = "%Y%m%d%H%M%S" if len(text) == 14 else "%y%m%d%H%M%S"
        return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.timezone.utc)
    raise InvalidArgsException(f"unsupported Validity.Type {kind}")


def subordinate_extensions(ca, csr, path_length: int):
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (usage, True),
        (x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False),
    ]


def chain_above(ca) -> bytes:
    """The issuing CA's certificate and the chain it was imported with: up to the root."""
    chain = ca.certificate_bytes.strip() + b"\n"
    if ca.certificate_chain:
        imported = ca.certificate_chain
        if isinstance(imported, str):
            imported = imported.encode()
        try:
            imported = base64.b64decode(imported, validate=True)
        except ValueError:
            pass  # already PEM
        chain += imported.strip() + b"\n"
    return chain


def ca_issue_certificate(self, csr_bytes, template_arn, validity=None, signing_algorithm=None):
    try:
        csr = x509.load_pem_x509_csr(base64.b64decode(csr_bytes))
    except ValueError as e:
        raise MalformedCSRException(str(e))
    if not csr.is_signature_valid:
        raise MalformedCSRException("the signature does not verify")
    digest = hash_for(signing_algorithm, self.key)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = not_after_for(validity, now)
    ca_cert = self.certificate
    if ca_cert is not None and not_after > ca_cert.not_valid_after_utc:
        raise InvalidArgsException("the validity ends after the CA certificate's")
    if template_arn and template_arn.startswith(SUBORDINATE_PREFIX):
        path_length = int(template_arn[len(SUBORDINATE_PREFIX)])
        extensions = subordinate_extensions(self, csr, path_length)
    else:
        extensions = self._x509_extensions(csr, template_arn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject if ca_cert is not None else self.issuer)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    pem = builder.sign(self.key, digest).public_bytes(serialization.Encoding.PEM)

    cert_id = str(mock_random.uuid4()).replace("-", "")
    cert_arn = f"{self.arn}/certificate/{cert_id}"
    self.issued_certificates[cert_arn] = pem
    if template_arn != ROOT_TEMPLATE:
        self.issued_certificates_certificate_chains[cert_arn] = chain_above(self)
    FAULTS.issued(cert_arn)
    return cert_arn


def backend_issue_certificate(self, certificate_authority_arn, csr, template_arn, validity=None, signing_algorithm=None):
    ca = self.describe_certificate_authority(certificate_authority_arn)
    return ca.issue_certificate(csr, template_arn, validity, signing_algorithm)


def response_issue_certificate(self) -> str:
    if FAULTS.throttle_issue():
        raise ThrottlingException()
    params = json.loads(self.body)
    cert_arn = self.acmpca_backend.issue_certificate(
        certificate_authority_arn=params.get("CertificateAuthorityArn"),
        csr=params.get("Csr").encode("utf-8"),
        template_arn=params.get("TemplateArn"),
        validity=params.get("Validity"),
        signing_algorithm=params.get("SigningAlgorithm"),
    )
    return json.dumps({"CertificateArn": cert_arn})


# --- GetCertificate --------------------------------------------------------------------------

_stock_backend_get_certificate = models.ACMPCABackend.get_certificate


def backend_get_certificate(self, certificate_authority_arn, certificate_arn):
    if FAULTS.still_pending(certificate_arn):
        raise pca_errors.RequestInProgressException("The request is already in progress.")
    certificate, chain = _stock_backend_get_certificate(self, certificate_authority_arn, certificate_arn)
    if chain and FAULTS.snapshot()["chain_without_root"]:
        certs = x509.load_pem_x509_certificates(chain)
        kept = [c for c in certs if c.subject != c.issuer]
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)
    return certificate, chain


_stock_backend_get_ca_certificate = models.ACMPCABackend.get_certificate_authority_certificate


def backend_get_ca_certificate(self, certificate_authority_arn):
    FAULTS.count("ca_certificate")
    return _stock_backend_get_ca_certificate(self, certificate_authority_arn)


# --- Cloud Map (servicediscovery) ------------------------------------------------------------

SD_PAGE = 100  # what AWS returns when MaxResults is omitted
_revisions = itertools.count(1)
_revisions_lock = threading.Lock()


class ResourceInUse(JsonRESTError):
    code = 400

    def __init__(self, why: str) -> None:
        super().__init__("ResourceInUse", why)


class ServiceAlreadyExists(JsonRESTError):
    code = 400

    def __init__(self, name: str) -> None:
        super().__init__("ServiceAlreadyExists", f"Service {name} already exists")


def bump_revision(service) -> None:
    """A fresh revision from one process-wide sequence: increasing for every service, and a
    service deleted and created again under the same name never repeats an old revision."""
    with _revisions_lock:
        service.capstan_revision = next(_revisions)


def has_health_check(service) -> bool:
    # `{}` is a valid HealthCheckCustomConfig (FailureThreshold is deprecated): test for None.
    return service.health_check_config is not None or service.health_check_custom_config is not None


_stock_sd_call_action = sd_responses.ServiceDiscoveryResponse.call_action


def sd_call_action(self):
    """Counts every call routed to the servicediscovery backend and throttles as configured."""
    if FAULTS.throttle_sd(self._get_action()):
        error = ThrottlingException()
        # AWS JSON 1.1 error: X-Amzn-ErrorType and {"__type", "message"}, plus a request id.
        headers, body = self._enrich_response({**self.response_headers, **dict(error.get_headers())}, error.get_body())
        return error.code, headers, body
    return _stock_sd_call_action(self)


_stock_sd_create_service = sd_models.ServiceDiscoveryBackend.create_service


def sd_create_service(self, name, namespace_id, creator_request_id, *args, **kwargs):
    if namespace_id not in self.namespaces:
        raise sd_errors.NamespaceNotFound(namespace_id)
    for service in self.services.values():
        if service.namespace_id == namespace_id and service.name == name:
            if creator_request_id and service.creator_request_id == creator_request_id:
                return service  # an idempotent retry
            raise ServiceAlreadyExists(name)
    service = _stock_sd_create_service(self, name, namespace_id, creator_request_id, *args, **kwargs)
    bump_revision(service)
    return service


def sd_delete_service(self, service_id):
    service = self.get_service(service_id)
    if service.instances:
        raise ResourceInUse(f"Service {service_id} still has {len(service.instances)} instances")
    del self.services[service_id]


_stock_sd_delete_namespace = sd_models.ServiceDiscoveryBackend.delete_namespace


def sd_delete_namespace(self, namespace_id):
    if any(s.namespace_id == namespace_id for s in self.services.values()):
        raise ResourceInUse(f"Namespace {namespace_id} still has services")
    return _stock_sd_delete_namespace(self, namespace_id)


def with_http_name(stock):
    """DNS namespaces are discoverable over the API too: AWS gives them HttpName = Name."""

    def create(self, name, *args, **kwargs):
        operation_id = stock(self, name, *args, **kwargs)
        namespace = self.namespaces[self.operations[operation_id].targets["NAMESPACE"]]
        namespace.http_properties = {"HttpName": name}
        return operation_id

    return create


def sd_register_instance(self, service_id, instance_id, creator_request_id, attributes):
    service = self.get_service(service_id)
    attributes = dict(attributes or {})
    existing = [i for i in service.instances if i.instance_id == instance_id]
    if existing:
        instance = existing[0]
        instance.attributes = attributes
        if creator_request_id:
            instance.creator_request_id = creator_request_id
    else:
        instance = sd_models.ServiceInstance(service_id, instance_id, creator_request_id, attributes)
        if not has_health_check(service):
            instance.health_status = "UNKNOWN"
        elif service.health_check_custom_config is not None:
            instance.health_status = attributes.get("AWS_INIT_HEALTH_STATUS", "HEALTHY")
        service.instances.append(instance)
    service.instances_revision[instance_id] = service.instances_revision.get(instance_id, 0) + 1
    bump_revision(service)
    return self._create_operation("REGISTER_INSTANCE", targets={"INSTANCE": instance_id})


_stock_sd_deregister_instance = sd_models.ServiceDiscoveryBackend.deregister_instance


def sd_deregister_instance(self, service_id, instance_id):
    operation_id = _stock_sd_deregister_instance(self, service_id, instance_id)
    bump_revision(self.get_service(service_id))
    return operation_id


_stock_sd_update_health = sd_models.ServiceDiscoveryBackend.update_instance_custom_health_status


def sd_update_health(self, service_id, instance_id, status):
    if self.get_service(service_id).health_check_custom_config is None:
        raise sd_errors.CustomHealthNotFound(service_id)
    return _stock_sd_update_health(self, service_id, instance_id, status)


def sd_find_service(self, namespace_name, service_name):
    for namespace in self.namespaces.values():
        if (namespace.http_properties or {}).get("HttpName", namespace.name) == namespace_name:
            break
    else:
        raise sd_errors.NamespaceNotFound(namespace_name)
    for service in self.services.values():
        if service.name == service_name and service.namespace_id == namespace.id:
            return service
    raise sd_errors.ServiceNotFound(service_name)


def sd_discover_instances(
    self, namespace_name, service_name, query_parameters=None, optional_parameters=None, health_status=None
):
    """(instances, revision): the revision is the service's, whatever the filters."""
    service = sd_find_service(self, namespace_name, service_name)
    health_status = health_status or "ALL"
    if health_status not in ("HEALTHY", "UNHEALTHY", "ALL", "HEALTHY_OR_ELSE_ALL"):
        raise sd_errors.InvalidInput("Invalid health status")
    if not has_health_check(service):
        health_status = "ALL"
    instances = self._filter_instances(
        service.instances, query_parameters or {}, optional_parameters or {}, health_status
    )
    return instances, service.capstan_revision


def sd_discover_instances_revision(self, namespace_name, service_name):
    return sd_find_service(self, namespace_name, service_name).capstan_revision


_stock_sd_paginate = sd_models.ServiceDiscoveryBackend.paginate


def sd_paginate(self, items, max_results=None, next_token=None):
    return _stock_sd_paginate(self, list(items), max_results or SD_PAGE, next_token)


def response_discover_instances(self) -> str:
    params = json.loads(self.body)
    namespace_name = params.get("NamespaceName")
    service_name = params.get("ServiceName")
    instances, revision = self.servicediscovery_backend.discover_instances(
        namespace_name=namespace_name,
        service_name=service_name,
        query_parameters=params.get("QueryParameters"),
        optional_parameters=params.get("OptionalParameters"),
        health_status=params.get("HealthStatus"),
    )
    page, _ = self.servicediscovery_backend.paginate(instances, max_results=params.get("MaxResults"))
    summaries = [
        {
            "InstanceId": i.instance_id,
            "NamespaceName": namespace_name,
            "ServiceName": service_name,
            "Attributes": i.attributes,
            "HealthStatus": i.health_status,
        }
        for i in page
    ]
    return json.dumps({"Instances": summaries, "InstancesRevision": revision})


def matches_filters(filters, value_of) -> bool:
    """Cloud Map list filters: every filter must match; EQ (the default), IN, BEGINS_WITH."""
    for f in filters or []:
        value, wanted = value_of(f.get("Name")), f.get("Values") or []
        condition = f.get("Condition") or "EQ"
        if condition == "EQ" and len(wanted) == 1:
            ok = value == wanted[0]
        elif condition == "IN":
            ok = value in wanted
        elif condition == "BEGINS_WITH" and len(wanted) == 1:
            ok = value is not None and value.startswith(wanted[0])
        else:
            raise sd_errors.InvalidInput(f"unsupported filter condition {condition} with {len(wanted)} values")
        if not ok:
            return False
    return True


def filtered_page(backend, params, items, value_of):
    """AWS takes MaxResults items first and then filters them: a page may come back empty
    with a NextToken."""
    page, token = backend.paginate(items, params.get("MaxResults"), params.get("NextToken"))
    return [i for i in page if matches_filters(params.get("Filters"), lambda n: value_of(i, n))], token


def service_filter_value(service, name):
    if name == "NAMESPACE_ID":
        return service.namespace_id
    if name == "RESOURCE_OWNER":
        return "SELF"
    raise sd_errors.InvalidInput(f"unsupported ListServices filter {name}")


def response_list_services(self) -> str:
    params = json.loads(self.body or "{}")
    for f in params.get("Filters") or []:
        if f.get("Name") == "NAMESPACE_ID":  # an id or an ARN
            f["Values"] = [v.rsplit("/", 1)[-1] for v in f.get("Values") or []]
    backend = self.servicediscovery_backend
    services, token = filtered_page(backend, params, backend.list_services(), service_filter_value)
    result: dict = {"Services": [{**s.to_json(), "InstanceCount": len(s.instances)} for s in services]}
    if token:
        result["NextToken"] = token
    return json.dumps(result)


def namespace_filter_value(namespace, name):
    if name == "TYPE":
        return namespace.type
    if name == "NAME":
        return namespace.name
    if name == "HTTP_NAME":
        return (namespace.http_properties or {}).get("HttpName")
    if name == "RESOURCE_OWNER":
        return "SELF"
    raise sd_errors.InvalidInput(f"unsupported ListNamespaces filter {name}")


def response_list_namespaces(self):
    params = json.loads(self.body or "{}")
    backend = self.servicediscovery_backend
    namespaces, token = filtered_page(backend, params, backend.list_namespaces(), namespace_filter_value)
    result: dict = {
        "Namespaces": [
            {**ns.to_json(), "ServiceCount": sum(s.namespace_id == ns.id for s in backend.services.values())}
            for ns in namespaces
        ]
    }
    if token:
        result["NextToken"] = token
    return 200, {}, json.dumps(result)


def apply_sd_patches() -> None:
    backend, response = sd_models.ServiceDiscoveryBackend, sd_responses.ServiceDiscoveryResponse
    response.call_action = sd_call_action
    backend.create_service = sd_create_service
    backend.delete_service = sd_delete_service
    backend.delete_namespace = sd_delete_namespace
    backend.create_private_dns_namespace = with_http_name(backend.create_private_dns_namespace)
    backend.create_public_dns_namespace = with_http_name(backend.create_public_dns_namespace)
    backend.register_instance = sd_register_instance
    backend.deregister_instance = sd_deregister_instance
    backend.update_instance_custom_health_status = sd_update_health
    backend.discover_instances = sd_discover_instances
    backend.discover_instances_revision = sd_discover_instances_revision
    backend.paginate = sd_paginate
    response.discover_instances = response_discover_instances
    response.list_services = response_list_services
    response.list_namespaces = response_list_namespaces


def apply_patches() -> None:
    models.CertificateAuthority.__init__ = ca_init
    models.CertificateAuthority.issue_certificate = ca_issue_certificate
    models.ACMPCABackend.issue_certificate = backend_issue_certificate
    models.ACMPCABackend.get_certificate = backend_get_certificate
    models.ACMPCABackend.get_certificate_authority_certificate = backend_get_ca_certificate
    responses.ACMPCAResponse.issue_certificate = response_issue_certificate
    apply_sd_patches()


# --- server ----------------------------------------------------------------------------------

def with_fault_endpoint(app):
    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") != "/capstan-moto/faults":
            return app(environ, start_response)
        request = Request(environ)
        if request.method == "POST":
            try:
                FAULTS.update(json.loads(request.get_data() or b"{}"))
            except (ValueError, TypeError) as e:
                return Response(str(e), status=400)(environ, start_response)
        body = json.dumps(FAULTS.snapshot())
        return Response(body, mimetype="application/json")(environ, start_response)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    apply_patches()
    app = DomainDispatcherApplication(create_backend_app)
    print(f"capstan_moto: moto {moto.__version__} patched, faults {FAULTS.snapshot()}", flush=True)
    run_simple(
        "127.0.0.1",
        args.port,
        with_fault_endpoint(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
