"""What the Dagster Helm chart (dagster/dagster 1.13) makes of deploy/helm/values.yaml, for the parts
dpe's deployment depends on: no Helm and no chart here, so this renders them as the chart's
templates do (read from the chart: `dagster.shared_env` in helpers/_helpers.tpl, configmap-instance.yaml
with helpers/instance/*.tpl, configmap-env-pipeline-run.yaml, configmap-env-daemon.yaml,
deployment-daemon.yaml, serviceaccount.yaml, role.yaml, rolebinding.yaml), with the release named
`dagster` in the namespace `dagster`, as deploy/README.md installs it.

- `daemon_environment`: the variables the chart gives the daemon's container (where the run
  launcher's `{env: ...}` values are read): `dagster.shared_env` from its `-daemon-env` ConfigMap,
  the values' `env` list, and `DAGSTER_PG_PASSWORD` from the PostgreSQL secret. Nothing else.
- `instance_yaml`: the `dagster.yaml` of its `-instance` ConfigMap (PostgreSQL storage from the
  values, the custom run coordinator and launcher with their `config` as given, monitoring,
  retries).
- `objects`: the ServiceAccount, Role, RoleBinding and ConfigMaps the chart creates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.paths import PROJECT_ROOT

VALUES = PROJECT_ROOT / "deploy" / "helm" / "values.yaml"
RELEASE = "dagster"  # the chart's fullname is the release name when it contains the chart's name
NAMESPACE = "dagster"
DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome default


def values(path: Path = VALUES) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _image(image: dict[str, Any]) -> str:
    return f"{image['repository']}:{image['tag']}"


def shared_env(vals: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    pipeline = vals.get("pipelineRun", {}).get("image") or vals["dagsterDaemon"]["image"]
    return {
        "DAGSTER_HOME": vals.get("global", {}).get("dagsterHome", DAGSTER_HOME),
        "DAGSTER_K8S_PIPELINE_RUN_NAMESPACE": namespace,
        "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": f"{RELEASE}-pipeline-env",
        "DAGSTER_K8S_PIPELINE_RUN_IMAGE": _image(pipeline),
        "DAGSTER_K8S_PIPELINE_RUN_IMAGE_PULL_POLICY": pipeline.get("pullPolicy", "IfNotPresent"),
    }


def daemon_environment(vals: dict[str, Any], pg_password: str, namespace: str = NAMESPACE) -> dict[str, str]:
    env = shared_env(vals, namespace)
    env.update({item["name"]: item["value"] for item in vals["dagsterDaemon"].get("env") or [] if "value" in item})
    env["DAGSTER_PG_PASSWORD"] = pg_password
    return env


def postgres_secret_name(vals: dict[str, Any]) -> str:
    return vals.get("global", {}).get("postgresqlSecretName") or f"{RELEASE}-postgresql-secret"


def instance_yaml(vals: dict[str, Any], postgres: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's dagster.yaml. `postgres` overrides hostname/port/db/params (a test's server)."""
    pg = vals["postgresql"]
    db = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
          "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"],
          "params": pg.get("postgresqlParams") or {}}
    db.update(postgres or {})
    storage = {"config": {"postgres_db": db}}
    daemon = vals["dagsterDaemon"]
    config: dict[str, Any] = {
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             **storage},
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", **storage},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage", **storage},
        "telemetry": {"enabled": False},
    }
    launcher = vals["runLauncher"]
    if launcher["type"] == "CustomRunLauncher":
        custom = launcher["config"]["customRunLauncher"]
        config["run_launcher"] = {"module": custom["module"], "class": custom["class"], "config": custom["config"]}
    coordinator = daemon.get("runCoordinator", {})
    if coordinator.get("enabled") and coordinator.get("type") == "CustomRunCoordinator":
        custom = coordinator["config"]["customRunCoordinator"]
        config["run_coordinator"] = {"module": custom["module"], "class": custom["class"], "config": custom["config"]}
    monitoring = daemon.get("runMonitoring", {})
    if monitoring.get("enabled"):
        config["run_monitoring"] = {"enabled": True, "start_timeout_seconds": monitoring["startTimeoutSeconds"],
                                    "poll_interval_seconds": monitoring["pollIntervalSeconds"],
                                    **({"max_resume_run_attempts": monitoring["maxResumeRunAttempts"]}
                                       if monitoring.get("maxResumeRunAttempts") else {})}
    retries = daemon.get("runRetries", {})
    if retries.get("enabled"):
        config["run_retries"] = {"enabled": True, **({"max_retries": retries["maxRetries"]}
                                                     if retries.get("maxRetries") else {})}
    return config


def objects(vals: dict[str, Any], namespace: str = NAMESPACE, instance: dict[str, Any] | None = None) -> list[dict]:
    """The chart's ServiceAccount, Role and RoleBinding, and its instance, pipeline-run and daemon
    environment ConfigMaps (`instance`: another dagster.yaml in the instance ConfigMap)."""
    account = vals.get("global", {}).get("serviceAccountName") or vals["serviceAccount"]["name"]
    meta = {"namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": account, **meta, "annotations": vals["serviceAccount"].get("annotations") or {}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": f"{RELEASE}-role", **meta},
         "rules": [
             {"apiGroups": ["batch"], "resources": ["jobs"],
              "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
             {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get", "watch", "list"]},
             {"apiGroups": [""], "resources": ["pods", "events"],
              "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
             {"apiGroups": [""], "resources": ["pods/log", "pods/status"], "verbs": ["get", "watch", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{RELEASE}-rolebinding", **meta},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{RELEASE}-role"},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{RELEASE}-instance", **meta},
         "data": {"dagster.yaml": yaml.safe_dump(instance if instance is not None else instance_yaml(vals))}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{RELEASE}-pipeline-env", **meta},
         "data": shared_env(vals, namespace)},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{RELEASE}-daemon-env", **meta},
         "data": shared_env(vals, namespace)},
    ]


def deployments(vals: dict[str, Any], namespace: str = NAMESPACE) -> list[dict]:
    """The chart's webserver, daemon and user code Deployments, as far as where their pods go:
    ServiceAccount, image, and the values' nodeSelector, tolerations and affinity."""
    account = vals.get("global", {}).get("serviceAccountName") or vals["serviceAccount"]["name"]

    def deployment(name: str, component: dict[str, Any]) -> dict:
        labels = {"app.kubernetes.io/instance": RELEASE, "component": name}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{RELEASE}-{name}",
                                                                           "namespace": namespace},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                    "metadata": {"labels": labels},
                    "spec": {"serviceAccountName": account, "nodeSelector": component.get("nodeSelector") or {},
                             "tolerations": component.get("tolerations") or [],
                             "affinity": component.get("affinity") or {},
                             "containers": [{"name": "dagster", "image": _image(component["image"])}]}}}}

    user = [deployment(d["name"], d) for d in vals.get("dagster-user-deployments", {}).get("deployments", [])]
    return [deployment("webserver", vals["dagsterWebserver"]), deployment("daemon", vals["dagsterDaemon"]), *user]
