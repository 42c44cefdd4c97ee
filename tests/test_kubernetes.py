"""deploy/k8s: rendered by `kubectl kustomize` and every resource validated offline against the Kubernetes 1.30
schemas (kubernetes-validate, strict); the promises the README makes about it checked on the rendered output."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"auth": 8001, "chat": 8002, "conversations": 8003}


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is required to render deploy/k8s (apt-get install kubernetes-client)"
    result = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(ROOT / "deploy" / "k8s")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def named(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def test_every_resource_is_valid_for_kubernetes(resources):
    for resource in resources:
        kubernetes_validate.validate(resource, "1.30.0", strict=True)  # raises on the first invalid field
    kinds = {r["kind"] for r in resources}
    assert kinds == {"Namespace", "ConfigMap", "Job", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "PersistentVolumeClaim"}  # fmt: skip


def test_every_chat_pod_reads_the_knowledge_base_from_one_shared_volume(resources):
    """#33: KB_ROOT is a volume the site fills, mounted read-only by every chat replica."""
    chat = named(resources, "Deployment")["chat"]["spec"]["template"]["spec"]
    [mount] = [m for m in chat["containers"][0]["volumeMounts"] if m["mountPath"] == "/kb"]
    assert mount["readOnly"] is True
    [volume] = [v for v in chat["volumes"] if v["name"] == mount["name"]]
    claim = named(resources, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    settings = named(resources, "ConfigMap")
    assert any(cm.get("data", {}).get("KB_ROOT") == "/kb" for cm in settings.values())


def test_each_service_has_probes_a_service_autoscaling_and_a_disruption_budget(resources):
    deployments = named(resources, "Deployment")
    assert set(deployments) == {*SERVICES, "gateway"}
    for name, port in SERVICES.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["command"][-1] == str(port)
        assert {"configMapRef", "secretRef"} <= {key for ref in container["envFrom"] for key in ref}
        assert deployments[name]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert named(resources, "Service")[name]["spec"]["ports"][0]["port"] == port
        hpa = named(resources, "HorizontalPodAutoscaler")[name]
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert named(resources, "PodDisruptionBudget")[name]["spec"]["minAvailable"] == 1
    job = named(resources, "Job")
    (migrate,) = job.values()
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "shared.migrate"]


def test_every_replica_fits_in_one_postgres(resources):
    """What the README promises: at the autoscalers' maximum, the pools stay under max_connections (100)."""
    settings = named(resources, "ConfigMap")
    (generated,) = [c for name, c in settings.items() if name.startswith("wibot-settings")]
    pool = int(generated["data"]["DB_POOL_MAX"])
    replicas = {name: hpa["spec"]["maxReplicas"] for name, hpa in named(resources, "HorizontalPodAutoscaler").items()}
    most = sum(replicas.values())
    # Beside its pool, each replica LISTENs on one connection (sessions), a chat replica on one more (knowledge).
    listeners = most + replicas["chat"]
    assert most * pool + listeners + 1 <= 90  # the migrate Job, and room for an operator's psql
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"{most} service replicas at `DB_POOL_MAX={pool}`", readme)


def test_the_gateway_renders_the_projects_nginx_template(resources):
    (gateway,) = [c for name, c in named(resources, "ConfigMap").items() if name.startswith("wibot-gateway")]
    assert gateway["data"]["wibot.conf.template"] == (ROOT / "nginx" / "wibot.conf.template").read_text("utf-8")
    env = {
        e["name"] for e in named(resources, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", gateway["data"]["wibot.conf.template"]))
    assert placeholders <= env, placeholders - env
