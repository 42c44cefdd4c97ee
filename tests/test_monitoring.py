"""What an operator monitors with: Prometheus alert rules and configuration (checked by promtool), the Grafana
dashboard (every query names metrics the services export), the compose profile that runs both."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import services.chat.quota  # noqa: F401 - registers every metric of the services
import shared.http  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is required (apt-get install prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def test_alert_rules_pass_promtool():
    result = promtool("check", "rules", str(MONITORING / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout + result.stderr


def test_prometheus_configuration_passes_promtool(tmp_path):
    # The configuration names the rules by their path in the container: check it with the file beside it.
    config = (MONITORING / "prometheus.yml").read_text(encoding="utf-8").replace("/etc/prometheus/", f"{tmp_path}/")
    (tmp_path / "prometheus.yml").write_text(config, encoding="utf-8")
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_metrics() -> set[str]:
    """Every series name the registry can expose (a labelled metric shows no sample before its first use)."""
    return {family.name + suffix for family in REGISTRY.collect() for suffix in SUFFIXES.get(family.type, ("",))}


def metrics_named(expression: str) -> set[str]:
    return set(re.findall(r"\b(wibot_[a-z_]+)", expression))


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_query_names_metrics_the_services_export(source):
    if source == "alerts":
        text = (MONITORING / "alerts.yml").read_text(encoding="utf-8")
        expressions = [text]
    else:
        dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "wibot.json").read_text(encoding="utf-8"))
        expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        assert len(expressions) >= 8
    named = set().union(*(metrics_named(e) for e in expressions))
    assert named and named <= exported_metrics(), named - exported_metrics()


def test_the_monitoring_profile_loads_both(tmp_path):
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    assert compose["prometheus"]["profiles"] == compose["grafana"]["profiles"] == ["monitoring"]
    mounts = compose["prometheus"]["volumes"] + compose["grafana"]["volumes"]
    for mount in mounts:
        assert (ROOT / mount.split(":")[0]).exists(), mount
    for service in ("prometheus", "grafana"):  # never open to the network
        assert all(port.startswith("127.0.0.1:") for port in compose[service]["ports"])
