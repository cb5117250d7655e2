"""deploy/kubernetes: every document parses and says what the README promises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.durations import parse_duration
from reconciler.probes import parse_addr
from reconciler.schedule import load_schedule
from reconciler.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _documents() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert isinstance(doc, dict), path.name
            found[doc["kind"]] = doc
    return found


DOCS = _documents()


def _container(kind: str) -> dict[str, Any]:
    spec = DOCS[kind]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert isinstance(container, dict)
    return container


@pytest.mark.parametrize(
    "kind", ["Deployment", "Job", "PodDisruptionBudget", "ConfigMap", "Secret"]
)
def test_every_document_is_valid_for_the_kubernetes_api(kind: str) -> None:
    """Strict validation against Kubernetes 1.30's schemas: a typo in a field name fails."""
    import kubernetes_validate

    kubernetes_validate.validate(DOCS[kind], "1.30.0", strict=True)


def test_every_file_is_in_the_kustomization() -> None:
    listed = set(DOCS["Kustomization"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_deployment_runs_two_replicas_with_probes_on_the_daemons_endpoint() -> None:
    deployment = DOCS["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    container = _container("Deployment")
    assert container["args"] == ["daemon"]
    port = parse_addr(DOCS["ConfigMap"]["data"]["RECONCILER_HTTP_ADDR"])[1]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_grace_period_outlasts_the_shutdown_grace() -> None:
    grace = parse_duration(DOCS["ConfigMap"]["data"]["RECONCILER_SHUTDOWN_GRACE"])
    period = DOCS["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period > grace.total_seconds()


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_locked_down(kind: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, every capability
    dropped, the runtime's seccomp profile, no service account token, resources set."""
    pod = DOCS[kind]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = _container(kind)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
    assert sources == ["reconciler", "reconciler"]  # the ConfigMap, then the Secret


def test_the_migration_job_runs_migrate_once() -> None:
    job = DOCS["Job"]
    assert _container("Job")["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_disruption_budget_covers_the_deployments_pods() -> None:
    selector = DOCS["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector == DOCS["Deployment"]["spec"]["selector"]["matchLabels"]
    assert DOCS["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def test_the_configmap_holds_valid_settings_and_a_valid_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DOCS["ConfigMap"]["data"]
    schedule = tmp_path / "schedule.toml"
    schedule.write_text(data["schedule.toml"], encoding="utf-8")
    assert {e.task for e in load_schedule(schedule).enabled()} == {
        "mark-stale",
        "requeue",
        "dead-letter",
        "purge",
        "vacuum-analyze",
    }
    for key, value in data.items():
        if key.startswith("RECONCILER_"):
            monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("RECONCILER_SCHEDULE_FILE", str(schedule))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.http_addr == "0.0.0.0:9464"
    mount = _container("Deployment")["volumeMounts"][0]["mountPath"]
    assert data["RECONCILER_SCHEDULE_FILE"].startswith(mount + "/")
