"""moto 5.2.5 serving AWS Private CA on loopback, patched where its ACM-PCA backend differs
from AWS in ways capstan depends on, with fault injection for the e2e tests.

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

Faults, for tests: from the environment at start, or `POST /capstan-moto/faults` with a JSON
object of the same keys in lower case (`GET` shows them and call counters: issue, throttled,
get, in_progress, ca_certificate):
  MOTO_PCA_PENDING_POLLS=N    each new certificate answers RequestInProgressException to its
                              first N GetCertificate calls
  MOTO_PCA_THROTTLE_ISSUES=N  the next N IssueCertificate calls answer ThrottlingException
                              (-1: all of them, until changed)
  MOTO_PCA_CHAIN_WITHOUT_ROOT=1  GetCertificate's chain stops below the root
"""

import argparse
import base64
import datetime
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
        self.counts = {"issue": 0, "throttled": 0, "get": 0, "in_progress": 0, "ca_certificate": 0}
        # Per certificate ARN: GetCertificate calls still to answer "in progress".
        self.pending: dict[str, int] = {}

    def update(self, settings: dict) -> None:
        with self.lock:
            for key in ("pending_polls", "throttle_issues"):
                if key in settings:
                    setattr(self, key, int(settings[key]))
            if "chain_without_root" in settings:
                self.chain_without_root = bool(settings["chain_without_root"])

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "pending_polls": self.pending_polls,
                "throttle_issues": self.throttle_issues,
                "chain_without_root": self.chain_without_root,
                "counts": dict(self.counts),
            }

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


def apply_patches() -> None:
    models.CertificateAuthority.__init__ = ca_init
    models.CertificateAuthority.issue_certificate = ca_issue_certificate
    models.ACMPCABackend.issue_certificate = backend_issue_certificate
    models.ACMPCABackend.get_certificate = backend_get_certificate
    models.ACMPCABackend.get_certificate_authority_certificate = backend_get_ca_certificate
    responses.ACMPCAResponse.issue_certificate = response_issue_certificate


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
