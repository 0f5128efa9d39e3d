"""Tests of the Helm chart (helm/portcullis) and the example application chart
(helm/examples/app-with-sidecar), run by scripts/test-helm.

Rendering and linting use Helm's own Go library (helm-python-sdk, no helm binary, no
cluster). Every rendered object is validated with kubernetes-validate against the schemas
of Kubernetes KUBE_VERSION in strict mode (unknown fields are errors); only kinds with no
schema there (the Prometheus Operator's ServiceMonitor, a CRD) are skipped, and the test
then checks their fields itself. On top, assertions on what a deployment depends on:
probe paths and ports, security contexts, secrets only through secretKeyRef, TLS mounts
and variables, and the sidecar injected into the example application.

Run: python -m unittest discover -s helm/tests -t helm/tests -v  (scripts/test-helm does it)
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

HELM_DIR = Path(__file__).resolve().parent.parent
CHART = HELM_DIR / "portcullis"
EXAMPLE = HELM_DIR / "examples" / "app-with-sidecar"
PRODUCTION = HELM_DIR / "tests" / "values-production.yaml"
KUBE_VERSION = "1.30.0"
# Kinds without a schema in kubernetes-validate: CRDs. Anything else missing one fails.
CRD_KINDS = {"ServiceMonitor"}

KEK = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
ADMIN_TOKEN = "admin-token-0123456789abcdef"
DATABASE_URL = "postgres://portcullis:db-password-x1@postgres.data.svc:5432/portcullis"
REDIS_URL = "redis://:redis-password-y2@redis.data.svc:6379/0"
SMTP_URL = "smtps://mailer:smtp-password-z3@smtp.example.com:465"
REDIS_PASSWORD = "redis-master-password-w4"
REDIS_SENTINEL_PASSWORD = "redis-sentinel-password-v5"
# The install helm/README.md starts with: the defaults plus what has none.
MINIMAL: dict[str, Any] = {
    "secrets": {
        "databaseUrl": DATABASE_URL,
        "redisUrl": REDIS_URL,
        "keyEncryptionKey": KEK,
        "adminToken": ADMIN_TOKEN,
        "smtpUrl": SMTP_URL,
    },
    "controlPlane": {
        "config": {"issuer": "https://auth.example.com", "mailFrom": "no-reply@example.com"}
    },
}
SECRET_VALUES = [KEK, ADMIN_TOKEN, DATABASE_URL, REDIS_URL, SMTP_URL, "db-password-x1",
                 REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD]
# Variables that carry secrets: never a `value`, always a secretKeyRef.
SECRET_VARS = {
    "PORTCULLIS_DATABASE_URL",
    "PORTCULLIS_REDIS_URL",
    "PORTCULLIS_KEY_ENCRYPTION_KEY",
    "PORTCULLIS_ADMIN_TOKEN",
    "PORTCULLIS_SMTP_URL",
    "PORTCULLIS_SMS_WEBHOOK_TOKEN",
    "PORTCULLIS_REDIS_PASSWORD",
    "PORTCULLIS_REDIS_SENTINEL_PASSWORD",
}
# The variables only Sentinel mode sets, besides PORTCULLIS_REDIS_SENTINELS and _MASTER.
SENTINEL_VARS = [
    "PORTCULLIS_REDIS_PASSWORD",
    "PORTCULLIS_REDIS_SENTINEL_PASSWORD",
    "PORTCULLIS_REDIS_SENTINEL_TLS",
]

_work: tempfile.TemporaryDirectory[str] | None = None
_example_chart: Path | None = None
skipped_kinds: set[str] = set()


def setUpModule() -> None:
    """The example chart's dependency (file://../../portcullis) is packaged into its
    charts/ by Helm's dependency update, in a copy of helm/ so the tree stays clean."""
    global _work, _example_chart
    helm.disable_logging()
    _work = tempfile.TemporaryDirectory(prefix="portcullis-helm-")
    copy_root = Path(_work.name) / "helm"
    shutil.copytree(
        HELM_DIR, copy_root, ignore=shutil.ignore_patterns("charts", "Chart.lock", "__pycache__")
    )
    _example_chart = copy_root / "examples" / "app-with-sidecar"
    helm.dependency_update(_example_chart)


def tearDownModule() -> None:
    if _work is not None:
        _work.cleanup()
    if skipped_kinds:
        print(
            f"\nnote: no Kubernetes {KUBE_VERSION} schema for {sorted(skipped_kinds)} (CRDs): "
            "not validated by kubernetes-validate, their fields are asserted by the tests",
            file=sys.stderr,
        )


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of values layers, later ones winning (as repeated -f files)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def render(chart: Path, values: dict[str, Any], name: str = "auth", namespace: str = "auth"):
    """Renders like `helm template` (schema checked first) and returns the objects."""
    with helm.Chart.load(chart) as loaded:
        loaded.validate_schema(values)
        manifests = loaded.render(values, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", None)
                if doc["metadata"]["annotations"] is None:
                    del doc["metadata"]["annotations"]
                objects.append(doc)
    return objects


def render_error(chart: Path, values: dict[str, Any]) -> str:
    """The message of a render that must fail."""
    try:
        render(chart, values)
    except helm.HelmError as e:
        return str(e)
    raise AssertionError(f"render succeeded with {values}")


def by_kind(objects, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(deployment: dict) -> dict[str, dict]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict, name: str) -> str:
    entry = env(container)[name]
    assert "valueFrom" not in entry, f"{name} comes from a reference"
    return entry["value"]


def secret_ref(container: dict, name: str) -> tuple[str, str]:
    entry = env(container)[name]
    assert "value" not in entry, f"{name} is inline"
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


class ChartTestCase(unittest.TestCase):
    def assert_valid_kubernetes(self, objects) -> None:
        """Every object against the Kubernetes schemas, strict (no unknown field)."""
        self.assertTrue(objects)
        for obj in objects:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                self.assertIn(obj["kind"], CRD_KINDS, f"{where}: no schema for a core kind")
                skipped_kinds.add(obj["kind"])
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                self.fail(f"{where} is not valid Kubernetes {KUBE_VERSION}: {path}: {e.message}")

    def assert_hardened(self, pod_spec: dict | None, container: dict) -> None:
        """The security context every Portcullis container runs with."""
        sc = container["securityContext"]
        self.assertIs(sc["runAsNonRoot"], True)
        self.assertEqual(sc["runAsUser"], 65532)
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("add", sc["capabilities"])
        self.assertEqual(sc["seccompProfile"]["type"], "RuntimeDefault")
        if pod_spec is not None:
            psc = pod_spec["securityContext"]
            self.assertIs(psc["runAsNonRoot"], True)
            self.assertEqual(psc["runAsUser"], 65532)
            self.assertEqual(psc["seccompProfile"]["type"], "RuntimeDefault")
            self.assertIs(pod_spec["automountServiceAccountToken"], False)

    def assert_probes(self, container: dict, probes: dict[str, str], scheme: str) -> None:
        """probes: {"livenessProbe": "/healthz", ...}, each on the container's HTTP port."""
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in probes.items():
            get = container[probe]["httpGet"]
            self.assertEqual(get["path"], path, probe)
            self.assertEqual(get["scheme"], scheme, probe)
            self.assertIn(get["port"], ports, f"{probe} names a port the container has")
            self.assertIn(ports[get["port"]], (8080, 8081), probe)

    def assert_consistent_pod(self, deployment: dict) -> None:
        """Mounts name existing volumes, probe ports exist, secrets never inline."""
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(deployment).values():
            for m in c.get("volumeMounts", []):
                self.assertIn(m["name"], volumes, f"{c['name']} mounts a missing volume")
            names = [e["name"] for e in c.get("env", [])]
            self.assertEqual(len(names), len(set(names)), f"{c['name']}: a variable repeats")
            for name, entry in env(c).items():
                if name in SECRET_VARS:
                    self.assertNotIn("value", entry, f"{name} inline in {c['name']}")
                    self.assertIn("secretKeyRef", entry["valueFrom"], name)
        text = yaml.safe_dump(deployment)
        for secret in SECRET_VALUES:
            self.assertNotIn(secret, text, "a secret value is inline in a Deployment")
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        self.assertLessEqual(selector.items(), labels.items())


class LintTest(ChartTestCase):
    def lint(self, chart: Path, values: dict[str, Any] | None) -> None:
        """`helm lint --strict --kube-version`: no warning, no error. Lint renders in
        "lint mode", where a template's `fail` or `required` is only logged, by Go's
        logger straight to file descriptor 2: that is captured, and any such record
        fails the test too."""
        with tempfile.TemporaryFile() as log:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                report = helm.lint(chart, values, strict=True, kube_version=f"v{KUBE_VERSION}")
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            log.seek(0)
            records = log.read().decode(errors="replace").splitlines()
        self.assertEqual(report["errors"], [])
        self.assertEqual([m for m in report["messages"] if m["severity"] >= 2], [])
        refused = [r for r in records if "fail" in r or "required" in r]
        self.assertEqual(refused, [], "a template refused the values during lint")

    def test_chart_lints_clean_with_helm(self) -> None:
        self.lint(CHART, MINIMAL)
        self.lint(CHART, merged(MINIMAL, yaml.safe_load(PRODUCTION.read_text())))

    def test_example_chart_lints_clean_with_helm(self) -> None:
        self.lint(_example_chart, None)


class DefaultValuesTest(ChartTestCase):
    def test_defaults_alone_refuse_naming_what_is_missing(self) -> None:
        # The chart generates no secret (a random key-encryption key would change on every
        # upgrade and lose every sealed signing key): without them it refuses to render.
        message = render_error(CHART, {})
        self.assertIn("secrets.databaseUrl is required", message)

    def test_verifier_only_needs_only_its_settings(self) -> None:
        objects = render(
            CHART,
            {
                "controlPlane": {"enabled": False},
                "secrets": {"redisUrl": REDIS_URL},
                "verifier": {"config": {"issuers": ["https://auth.example.com"]}},
            },
        )
        self.assert_valid_kubernetes(objects)
        self.assertEqual(set(by_kind(objects, "Deployment")), {"auth-portcullis-verifier"})
        secret = by_kind(objects, "Secret")["auth-portcullis"]
        self.assertEqual(set(secret["data"]), {"redis-url"})


class MinimalInstallTest(ChartTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.objects = render(CHART, MINIMAL)
        cls.deployments = by_kind(cls.objects, "Deployment")

    def test_objects_are_valid_kubernetes(self) -> None:
        self.assert_valid_kubernetes(self.objects)
        kinds = sorted({o["kind"] for o in self.objects})
        self.assertEqual(
            kinds, ["Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"]
        )

    def test_control_plane_pod(self) -> None:
        d = self.deployments["auth-portcullis-control-plane"]
        self.assert_consistent_pod(d)
        self.assertEqual(d["spec"]["replicas"], 2)
        c = containers(d)["control-plane"]
        self.assertEqual(c["image"], "ghcr.io/portcullis/control-plane:0.1.0")
        self.assertEqual(c["ports"], [{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
        self.assert_hardened(d["spec"]["template"]["spec"], c)
        self.assert_probes(
            c,
            {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"},
            "HTTP",
        )
        self.assertEqual(env_value(c, "PORTCULLIS_LISTEN"), "0.0.0.0:8080")
        self.assertEqual(env_value(c, "PORTCULLIS_ISSUER"), "https://auth.example.com")
        self.assertEqual(env_value(c, "PORTCULLIS_MAIL_FROM"), "no-reply@example.com")
        for var, key in [
            ("PORTCULLIS_DATABASE_URL", "database-url"),
            ("PORTCULLIS_REDIS_URL", "redis-url"),
            ("PORTCULLIS_KEY_ENCRYPTION_KEY", "key-encryption-key"),
            ("PORTCULLIS_ADMIN_TOKEN", "admin-token"),
            ("PORTCULLIS_SMTP_URL", "smtp-url"),
        ]:
            self.assertEqual(secret_ref(c, var), ("auth-portcullis", key))
        # Unset settings keep the binary's defaults; no TLS, no SMS token.
        for var in ["PORTCULLIS_KEY_ROTATION_DAYS", "PORTCULLIS_TLS_CERT_FILE",
                    "PORTCULLIS_SMS_WEBHOOK_TOKEN", "PORTCULLIS_REDIS_SENTINELS", *SENTINEL_VARS]:
            self.assertNotIn(var, env(c))
        self.assertIn("checksum/secret", d["spec"]["template"]["metadata"]["annotations"])

    def test_private_egress_under_either_name(self) -> None:
        self.assertNotIn("PORTCULLIS_EGRESS_ALLOW_PRIVATE", env(self.control_plane(MINIMAL)))
        for name in ["egressAllowPrivate", "webhookAllowPrivate"]:
            values = merged(MINIMAL, {"controlPlane": {"config": {name: True}}})
            c = self.control_plane(values)
            self.assertEqual(env_value(c, "PORTCULLIS_EGRESS_ALLOW_PRIVATE"), "true", name)

    def test_signed_key_sets(self) -> None:
        trust = '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"' + "A" * 43 + '"}]}'
        values = merged(MINIMAL, {
            "secrets": {"jwksPublisherKey": "A" * 43 + "="},
            "verifier": {"config": {"jwksTrustKeys": trust}},
        })
        objects = render(CHART, values)
        deployments = by_kind(objects, "Deployment")
        cp = containers(deployments["auth-portcullis-control-plane"])["control-plane"]
        self.assertEqual(secret_ref(cp, "PORTCULLIS_JWKS_PUBLISHER_KEY"),
                         ("auth-portcullis", "jwks-publisher-key"))
        verifier = containers(deployments["auth-portcullis-verifier"])["verifier"]
        self.assertEqual(env_value(verifier, "PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS"), trust)
        # Not set: neither variable.
        self.assertNotIn("PORTCULLIS_JWKS_PUBLISHER_KEY", env(self.control_plane(MINIMAL)))

    @staticmethod
    def control_plane(values: dict[str, Any]) -> dict:
        d = by_kind(render(CHART, values), "Deployment")["auth-portcullis-control-plane"]
        return containers(d)["control-plane"]

    def test_chart_secret_holds_the_values(self) -> None:
        import base64

        secret = by_kind(self.objects, "Secret")["auth-portcullis"]
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        self.assertEqual(
            data,
            {
                "database-url": DATABASE_URL,
                "redis-url": REDIS_URL,
                "key-encryption-key": KEK,
                "admin-token": ADMIN_TOKEN,
                "smtp-url": SMTP_URL,
            },
        )

    def test_verifier_pod(self) -> None:
        d = self.deployments["auth-portcullis-verifier"]
        self.assert_consistent_pod(d)
        c = containers(d)["verifier"]
        self.assertEqual(c["image"], "ghcr.io/portcullis/verifier:0.1.0")
        self.assertEqual(
            {p["name"]: p["containerPort"] for p in c["ports"]}, {"http": 8081, "grpc": 8082}
        )
        self.assert_hardened(d["spec"]["template"]["spec"], c)
        self.assert_probes(c, {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}, "HTTP")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_LISTEN"), "0.0.0.0:8081")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_GRPC_LISTEN"), "0.0.0.0:8082")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_ISSUER"), "https://auth.example.com")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_TYP"), "at+jwt")
        self.assertEqual(secret_ref(c, "PORTCULLIS_REDIS_URL"), ("auth-portcullis", "redis-url"))
        for var in ["PORTCULLIS_VERIFIER_POLICY_FILE", "PORTCULLIS_REDIS_SENTINELS", *SENTINEL_VARS]:
            self.assertNotIn(var, env(c))
        self.assertNotIn("volumes", d["spec"]["template"]["spec"])

    def test_services_and_budgets(self) -> None:
        services = by_kind(self.objects, "Service")
        cp = services["auth-portcullis-control-plane"]["spec"]
        self.assertEqual(cp["ports"], [{"name": "http", "port": 8080, "targetPort": "http",
                                        "protocol": "TCP"}])
        vf = services["auth-portcullis-verifier"]["spec"]
        self.assertEqual({p["name"]: (p["port"], p["targetPort"]) for p in vf["ports"]},
                         {"http": (8081, "http"), "grpc": (8082, "grpc")})
        for name, pdb in by_kind(self.objects, "PodDisruptionBudget").items():
            self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
            target = self.deployments[name]["spec"]["template"]["metadata"]["labels"]
            self.assertLessEqual(pdb["spec"]["selector"]["matchLabels"].items(), target.items())
        for name, svc in services.items():
            target = self.deployments[name]["spec"]["template"]["metadata"]["labels"]
            self.assertLessEqual(svc["spec"]["selector"].items(), target.items())


class ProductionTest(ChartTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.values = yaml.safe_load(PRODUCTION.read_text())
        cls.objects = render(CHART, cls.values)
        cls.deployments = by_kind(cls.objects, "Deployment")

    def test_objects_are_valid_kubernetes(self) -> None:
        self.assert_valid_kubernetes(self.objects)
        self.assertNotIn("Secret", {o["kind"] for o in self.objects}, "existingSecret is used")

    def assert_sentinel_auth_and_tls(self, c: dict) -> None:
        """Sentinel over TLS with both passwords, from the existing Secret's keys, the TLS
        trusting the mounted Redis CA."""
        self.assertEqual(secret_ref(c, "PORTCULLIS_REDIS_PASSWORD"),
                         ("portcullis-secrets", "REDIS_PASSWORD"))
        self.assertEqual(secret_ref(c, "PORTCULLIS_REDIS_SENTINEL_PASSWORD"),
                         ("portcullis-secrets", "REDIS_SENTINEL_PASSWORD"))
        self.assertEqual(env_value(c, "PORTCULLIS_REDIS_SENTINEL_TLS"), "true")
        self.assertEqual(env_value(c, "PORTCULLIS_REDIS_CA_FILE"), "/etc/portcullis/redis-ca/ca.crt")

    def test_control_plane_secrets_tls_and_sentinel(self) -> None:
        d = self.deployments["auth-portcullis-control-plane"]
        self.assert_consistent_pod(d)
        spec = d["spec"]["template"]["spec"]
        c = containers(d)["control-plane"]
        self.assert_hardened(spec, c)
        self.assert_probes(
            c,
            {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"},
            "HTTPS",
        )
        self.assertNotIn("replicas", d["spec"], "the HPA owns the replica count")
        self.assertEqual(secret_ref(c, "PORTCULLIS_DATABASE_URL"),
                         ("portcullis-secrets", "DATABASE_URL"))
        self.assertEqual(secret_ref(c, "PORTCULLIS_SMTP_URL"), ("portcullis-secrets", "SMTP_URL"))
        self.assertEqual(secret_ref(c, "PORTCULLIS_SMS_WEBHOOK_TOKEN"),
                         ("portcullis-secrets", "SMS_WEBHOOK_TOKEN"))
        self.assertNotIn("PORTCULLIS_REDIS_URL", env(c), "Sentinel replaces the URL")
        self.assertEqual(env_value(c, "PORTCULLIS_REDIS_SENTINELS"),
                         ",".join(self.values["redis"]["sentinels"]))
        self.assertEqual(env_value(c, "PORTCULLIS_REDIS_SENTINEL_MASTER"), "portcullis")
        self.assert_sentinel_auth_and_tls(c)
        self.assertEqual(env_value(c, "PORTCULLIS_TRUSTED_PROXIES"), "10.0.0.0/8,fd00::/8")
        self.assertEqual(env_value(c, "PORTCULLIS_KEY_PUBLISH_LEAD_SECS"), "0", "0 is a value")
        self.assertNotIn("checksum/secret", d["spec"]["template"]["metadata"].get("annotations", {}))
        # TLS: the files the variables name are where the Secret volumes are mounted.
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        self.assertEqual(env_value(c, "PORTCULLIS_TLS_CERT_FILE"), "/etc/portcullis/tls/tls.crt")
        self.assertEqual(env_value(c, "PORTCULLIS_TLS_KEY_FILE"), "/etc/portcullis/tls/tls.key")
        self.assertEqual(mounts["portcullis-tls"]["mountPath"], "/etc/portcullis/tls")
        self.assertIs(mounts["portcullis-tls"]["readOnly"], True)
        tls = volumes["portcullis-tls"]["secret"]
        self.assertEqual(tls["secretName"], "portcullis-control-plane-tls")
        self.assertEqual({i["path"] for i in tls["items"]}, {"tls.crt", "tls.key"})
        self.assertEqual(tls["defaultMode"], 0o440)
        self.assertEqual(env_value(c, "PORTCULLIS_REDIS_CA_FILE"), "/etc/portcullis/redis-ca/ca.crt")
        self.assertEqual(mounts["portcullis-redis-ca"]["mountPath"], "/etc/portcullis/redis-ca")
        self.assertEqual(volumes["portcullis-redis-ca"]["configMap"]["name"], "redis-ca")
        self.assertEqual(volumes["portcullis-redis-ca"]["configMap"]["items"],
                         [{"key": "ca.pem", "path": "ca.crt"}])
        self.assertEqual(mounts["portcullis-postgres-ca"]["mountPath"], "/etc/portcullis/postgres-ca")
        self.assertEqual(volumes["portcullis-postgres-ca"]["secret"]["secretName"], "postgres-ca")

    def test_verifier_mtls_policy_and_sentinel(self) -> None:
        d = self.deployments["auth-portcullis-verifier"]
        self.assert_consistent_pod(d)
        spec = d["spec"]["template"]["spec"]
        c = containers(d)["verifier"]
        self.assert_hardened(spec, c)
        self.assert_probes(c, {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}, "HTTPS")
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_TLS_CERT_FILE"),
                         "/etc/portcullis/verifier-tls/tls.crt")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_TLS_KEY_FILE"),
                         "/etc/portcullis/verifier-tls/tls.key")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_TLS_CLIENT_CA_FILE"),
                         "/etc/portcullis/verifier-client-ca/ca.crt")
        self.assertEqual(mounts["portcullis-verifier-tls"], "/etc/portcullis/verifier-tls")
        self.assertEqual(mounts["portcullis-verifier-client-ca"], "/etc/portcullis/verifier-client-ca")
        self.assertEqual(volumes["portcullis-verifier-tls"]["secret"]["secretName"],
                         "portcullis-verifier-tls")
        self.assertEqual(volumes["portcullis-verifier-client-ca"]["secret"]["secretName"],
                         "envoy-client-ca")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_AUDIENCE"),
                         "0190a1b2-0000-7000-8000-00000000a00a")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_COOKIE"), "portcullis_access")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_LEEWAY_SECS"), "0")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_CACHE_ENTRIES"), "262144")
        self.assertEqual(env_value(c, "PORTCULLIS_VERIFIER_DPOP_REPLAY_ENTRIES"), "4194304")
        self.assertNotIn("PORTCULLIS_VERIFIER_DPOP_MAX_AGE_SECS", env(c))
        self.assertEqual(env_value(c, "PORTCULLIS_REDIS_SENTINEL_MASTER"), "portcullis")
        self.assertNotIn("PORTCULLIS_REDIS_URL", env(c))
        self.assert_sentinel_auth_and_tls(c)
        self.assertEqual(mounts["portcullis-redis-ca"], "/etc/portcullis/redis-ca")
        self.assertEqual(volumes["portcullis-redis-ca"]["configMap"]["name"], "redis-ca")
        # The policy: a ConfigMap rendered from the rules, mounted as a directory (no
        # subPath, so edits reach the running verifier), at the path the variable names.
        policy_file = env_value(c, "PORTCULLIS_VERIFIER_POLICY_FILE")
        self.assertEqual(policy_file, "/etc/portcullis/policy/policy.yaml")
        self.assertEqual(mounts["portcullis-verifier-policy"], "/etc/portcullis/policy")
        self.assertNotIn("subPath", {k for m in c["volumeMounts"] for k in m})
        cm_name = volumes["portcullis-verifier-policy"]["configMap"]["name"]
        cm = by_kind(self.objects, "ConfigMap")[cm_name]
        policy = yaml.safe_load(cm["data"]["policy.yaml"])
        self.assertEqual(policy, {"rules": self.values["verifier"]["policy"]["rules"]})
        service = by_kind(self.objects, "Service")["auth-portcullis-verifier"]["spec"]
        self.assertEqual(service["clusterIP"], "None")

    def test_autoscalers_budgets_monitors_policies(self) -> None:
        hpas = by_kind(self.objects, "HorizontalPodAutoscaler")
        self.assertEqual(set(hpas), set(self.deployments))
        cp = hpas["auth-portcullis-control-plane"]["spec"]
        self.assertEqual(cp["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": "auth-portcullis-control-plane"})
        self.assertEqual((cp["minReplicas"], cp["maxReplicas"]), (3, 12))
        self.assertEqual(
            {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
             for m in cp["metrics"]},
            {"cpu": 70, "memory": 80},
        )
        pdbs = by_kind(self.objects, "PodDisruptionBudget")
        self.assertEqual(pdbs["auth-portcullis-control-plane"]["spec"]["minAvailable"], 2)
        self.assertNotIn("maxUnavailable", pdbs["auth-portcullis-control-plane"]["spec"])
        monitors = by_kind(self.objects, "ServiceMonitor")
        self.assertEqual(set(monitors), set(self.deployments))
        services = by_kind(self.objects, "Service")
        for name, sm in monitors.items():
            self.assertEqual(sm["apiVersion"], "monitoring.coreos.com/v1")
            self.assertEqual(sm["metadata"]["labels"]["release"], "prometheus")
            self.assertLessEqual(sm["spec"]["selector"]["matchLabels"].items(),
                                 services[name]["metadata"]["labels"].items())
            self.assertEqual(sm["spec"]["namespaceSelector"], {"matchNames": ["auth"]})
            (endpoint,) = sm["spec"]["endpoints"]
            self.assertEqual((endpoint["port"], endpoint["path"], endpoint["scheme"]),
                             ("http", "/metrics", "https"))
            self.assertIn(endpoint["port"], {p["name"] for p in services[name]["spec"]["ports"]})
            self.assertIn("tlsConfig", endpoint)
        policies = by_kind(self.objects, "NetworkPolicy")
        cp_np = policies["auth-portcullis-control-plane"]["spec"]
        self.assertEqual(cp_np["policyTypes"], ["Ingress"], "egress left open without rules")
        self.assertEqual(cp_np["ingress"][0]["ports"], [{"port": 8080, "protocol": "TCP"}])
        self.assertEqual(len(cp_np["ingress"][0]["from"]), 2)
        vf_np = policies["auth-portcullis-verifier"]["spec"]
        self.assertEqual(vf_np["policyTypes"], ["Ingress", "Egress"])
        self.assertEqual({p["port"] for p in vf_np["ingress"][0]["ports"]}, {8081, 8082})


class ChartSecretSentinelTest(ChartTestCase):
    """Sentinel with the passwords inline: in the chart's Secret, referenced by both
    components, never in a Deployment; TLS left off is said explicitly."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.objects = render(CHART, merged(MINIMAL, {
            "secrets": {"redisUrl": "", "redisPassword": REDIS_PASSWORD,
                        "redisSentinelPassword": REDIS_SENTINEL_PASSWORD},
            "redis": {"sentinels": ["redis-sentinel.data.svc:26379"],
                      "sentinelMaster": "portcullis"},
        }))

    def test_secret_and_references(self) -> None:
        import base64

        self.assert_valid_kubernetes(self.objects)
        secret = by_kind(self.objects, "Secret")["auth-portcullis"]
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        self.assertEqual(data["redis-password"], REDIS_PASSWORD)
        self.assertEqual(data["redis-sentinel-password"], REDIS_SENTINEL_PASSWORD)
        self.assertNotIn("redis-url", data)
        for name, d in by_kind(self.objects, "Deployment").items():
            self.assert_consistent_pod(d)
            (c,) = containers(d).values()
            self.assertNotIn("PORTCULLIS_REDIS_URL", env(c), name)
            self.assertEqual(secret_ref(c, "PORTCULLIS_REDIS_PASSWORD"),
                             ("auth-portcullis", "redis-password"), name)
            self.assertEqual(secret_ref(c, "PORTCULLIS_REDIS_SENTINEL_PASSWORD"),
                             ("auth-portcullis", "redis-sentinel-password"), name)
            self.assertEqual(env_value(c, "PORTCULLIS_REDIS_SENTINEL_TLS"), "false", name)
            # The passwords are read at start: a changed Secret rolls the pods.
            self.assertIn("checksum/secret", d["spec"]["template"]["metadata"]["annotations"],
                          name)

    def test_no_password_no_variable(self) -> None:
        objects = render(CHART, merged(MINIMAL, {
            "secrets": {"redisUrl": ""},
            "redis": {"sentinels": ["redis-sentinel.data.svc:26379"],
                      "sentinelMaster": "portcullis"},
        }))
        self.assert_valid_kubernetes(objects)
        verifier = by_kind(objects, "Deployment")["auth-portcullis-verifier"]
        c = containers(verifier)["verifier"]
        self.assertNotIn("PORTCULLIS_REDIS_PASSWORD", env(c))
        self.assertNotIn("PORTCULLIS_REDIS_SENTINEL_PASSWORD", env(c))
        self.assertNotIn("checksum/secret",
                         verifier["spec"]["template"]["metadata"].get("annotations", {}),
                         "the verifier reads nothing from the Secret")


class ExampleAppTest(ChartTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.objects = render(_example_chart, {}, name="shop", namespace="shop")

    def test_objects_are_valid_kubernetes(self) -> None:
        self.assert_valid_kubernetes(self.objects)
        self.assertEqual(set(by_kind(self.objects, "Deployment")), {"shop-app-with-sidecar"},
                         "the dependency renders no control plane or verifier of its own")
        self.assertNotIn("Secret", {o["kind"] for o in self.objects})

    def test_sidecar_injected_next_to_the_app(self) -> None:
        d = by_kind(self.objects, "Deployment")["shop-app-with-sidecar"]
        self.assert_consistent_pod(d)
        spec = d["spec"]["template"]["spec"]
        self.assertEqual([c["name"] for c in spec["containers"]], ["app", "portcullis-verifier"])
        self.assertNotIn("initContainers", spec)
        sidecar = containers(d)["portcullis-verifier"]
        self.assertEqual(sidecar["image"], "ghcr.io/portcullis/verifier:0.1.0",
                         "the tag defaults to the portcullis chart's appVersion")
        self.assert_hardened(None, sidecar)
        self.assert_probes(sidecar, {"livenessProbe": "/healthz", "readinessProbe": "/readyz"},
                           "HTTP")
        self.assertEqual(sidecar["livenessProbe"]["httpGet"]["port"], "verifier-http")
        ports = [p["name"] for c in spec["containers"] for p in c["ports"]]
        self.assertEqual(len(ports), len(set(ports)), "port names are unique in the pod")
        self.assertEqual(secret_ref(sidecar, "PORTCULLIS_REDIS_URL"), ("portcullis-redis", "redis-url"))
        for var in ["PORTCULLIS_REDIS_SENTINELS", *SENTINEL_VARS]:
            self.assertNotIn(var, env(sidecar), "the example uses a Redis URL, not Sentinel")
        self.assertEqual(env_value(sidecar, "PORTCULLIS_VERIFIER_ISSUER"), "https://auth.example.com")
        # The policy ConfigMap the sidecar mounts is the one the chart renders.
        volumes = {v["name"]: v for v in spec["volumes"]}
        cm_name = volumes["portcullis-verifier-policy"]["configMap"]["name"]
        cm = by_kind(self.objects, "ConfigMap")[cm_name]
        self.assertEqual(yaml.safe_load(cm["data"]["policy.yaml"])["rules"][0],
                         {"prefix": "/public", "public": True})
        self.assertEqual(env_value(sidecar, "PORTCULLIS_VERIFIER_POLICY_FILE"),
                         "/etc/portcullis/policy/policy.yaml")
        # The application reaches the sidecar on loopback, at its HTTP port.
        nginx = by_kind(self.objects, "ConfigMap")["shop-app-with-sidecar-nginx"]["data"]["nginx.conf"]
        self.assertIn("proxy_pass http://127.0.0.1:8081/ext_authz;", nginx)
        app = containers(d)["app"]
        self.assertIs(app["securityContext"]["readOnlyRootFilesystem"], True)

    def test_native_sidecar_and_tls(self) -> None:
        objects = render(_example_chart, {"portcullis": {"sidecar": {
            "native": True,
            "tls": {"enabled": True, "secretName": "shop-verifier-tls",
                    "clientCa": {"enabled": True}},
        }}}, name="shop", namespace="shop")
        self.assert_valid_kubernetes(objects)
        d = by_kind(objects, "Deployment")["shop-app-with-sidecar"]
        self.assert_consistent_pod(d)
        spec = d["spec"]["template"]["spec"]
        (sidecar,) = spec["initContainers"]
        self.assertEqual(sidecar["restartPolicy"], "Always")
        self.assertEqual([c["name"] for c in spec["containers"]], ["app"])
        self.assert_probes(sidecar, {"livenessProbe": "/healthz", "readinessProbe": "/readyz"},
                           "HTTPS")
        volumes = {v["name"]: v for v in spec["volumes"]}
        self.assertEqual(volumes["portcullis-verifier-client-ca"]["secret"]["secretName"],
                         "shop-verifier-tls", "the client CA defaults to the TLS Secret's ca.crt")
        self.assertEqual(volumes["portcullis-verifier-tls"]["secret"]["defaultMode"], 0o444)
        self.assertEqual(env_value(sidecar, "PORTCULLIS_VERIFIER_TLS_CLIENT_CA_FILE"),
                         "/etc/portcullis/verifier-client-ca/ca.crt")


    def test_sidecar_with_sentinel_passwords_and_tls(self) -> None:
        objects = render(_example_chart, {"portcullis": {"sidecar": {"redis": {
            "sentinels": ["redis-sentinel.data.svc:26379"],
            "sentinelMaster": "portcullis",
            "passwordKey": "redis-password",
            "sentinelPasswordKey": "redis-sentinel-password",
            "sentinelTls": True,
            "ca": {"secretName": "redis-ca"},
        }}}}, name="shop", namespace="shop")
        self.assert_valid_kubernetes(objects)
        d = by_kind(objects, "Deployment")["shop-app-with-sidecar"]
        self.assert_consistent_pod(d)
        sidecar = containers(d)["portcullis-verifier"]
        self.assertNotIn("PORTCULLIS_REDIS_URL", env(sidecar))
        self.assertEqual(env_value(sidecar, "PORTCULLIS_REDIS_SENTINEL_MASTER"), "portcullis")
        self.assertEqual(secret_ref(sidecar, "PORTCULLIS_REDIS_PASSWORD"),
                         ("portcullis-redis", "redis-password"))
        self.assertEqual(secret_ref(sidecar, "PORTCULLIS_REDIS_SENTINEL_PASSWORD"),
                         ("portcullis-redis", "redis-sentinel-password"))
        self.assertEqual(env_value(sidecar, "PORTCULLIS_REDIS_SENTINEL_TLS"), "true")
        self.assertEqual(env_value(sidecar, "PORTCULLIS_REDIS_CA_FILE"),
                         "/etc/portcullis/redis-ca/ca.crt")
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(volumes["portcullis-redis-ca"]["secret"]["secretName"], "redis-ca")

    def test_sidecar_refuses_sentinel_settings_without_sentinels(self) -> None:
        def error(redis: dict[str, Any]) -> str:
            try:
                render(_example_chart, {"portcullis": {"sidecar": {"redis": redis}}})
            except helm.HelmError as e:
                return str(e)
            raise AssertionError(f"render succeeded with {redis}")

        self.assertIn("redis.sentinelTls is only for redis.sentinels",
                      error({"sentinelTls": True}))
        self.assertIn("redis.passwordKey is only for redis.sentinels",
                      error({"passwordKey": "redis-password"}))
        self.assertIn("keys of redis.existingSecret, which is not set",
                      error({"existingSecret": "", "sentinels": ["s:26379"], "sentinelMaster": "m",
                             "sentinelPasswordKey": "redis-sentinel-password"}))


class RefusalTest(ChartTestCase):
    """Mistakes are caught at render time, with the value named."""

    def check(self, overrides: dict[str, Any], expected: str, base=MINIMAL) -> None:
        self.assertIn(expected, render_error(CHART, merged(base, overrides)))

    def test_schema_refuses_unknown_and_malformed_values(self) -> None:
        self.check({"controlPlane": {"replica": 3}}, "additional properties 'replica' not allowed")
        self.check({"secrets": {"adminToken": "short"}}, "/secrets/adminToken")
        self.check({"secrets": {"keyEncryptionKey": "c2hvcnQ="}}, "/secrets/keyEncryptionKey")
        self.check({"verifier": {"policy": {"rules": [{"prefix": "admin"}]}}}, "/verifier/policy")
        self.check({"controlPlane": {"config": {"issuer": "auth.example.com"}}}, "issuer")

    def test_templates_refuse_inconsistent_values(self) -> None:
        self.check({"controlPlane": {"tls": {"enabled": True}}}, "controlPlane.tls.secretName")
        self.check({"verifier": {"tls": {"clientCa": {"enabled": True}}}},
                   "verifier.tls.clientCa.enabled needs verifier.tls.enabled")
        self.check({"redis": {"sentinels": ["s:26379"]}}, "redis.sentinelMaster is required")
        # Sentinel's own variables, which the binaries refuse next to a URL.
        self.check({"redis": {"sentinelTls": True}},
                   "redis.sentinelTls is only for redis.sentinels")
        self.check({"secrets": {"redisPassword": REDIS_PASSWORD}},
                   "secrets.redisPassword is only for redis.sentinels")
        self.check({"secrets": {"existingSecret": "mine",
                                "existingSecretKeys": {"redisSentinelPassword": "SENTINEL"}}},
                   "secrets.existingSecretKeys.redisSentinelPassword is only for redis.sentinels")
        self.check({"controlPlane": {"config": {"mailFrom": ""}}}, "mailFrom is required")
        self.check({"secrets": {"existingSecret": "mine", "existingSecretKeys": {"adminToken": ""}}},
                   "secrets.existingSecretKeys.adminToken")


class DocsTest(unittest.TestCase):
    def test_every_value_is_in_the_readme_table(self) -> None:
        # Kubernetes objects (resources, security contexts, probes, strategy) are one row.
        whole = {"resources", "podSecurityContext", "securityContext", "startupProbe",
                 "livenessProbe", "readinessProbe", "strategy"}

        def leaves(node: Any, path: tuple[str, ...] = ()):
            if isinstance(node, dict) and node and not (path and path[-1] in whole):
                for key, value in node.items():
                    yield from leaves(value, path + (key,))
            else:
                yield ".".join(path)

        readme = (HELM_DIR / "README.md").read_text()
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        missing = [p for p in leaves(values) if f"| `{p}` |" not in readme]
        self.assertEqual(missing, [], "values without a row in helm/README.md")


if __name__ == "__main__":
    unittest.main(verbosity=2)
