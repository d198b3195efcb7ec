"""The deployment files, checked as files: KubeRay manifests and NetworkPolicies (infra/k8s), the
Serve config the RayService embeds, the job recipes they run, their secrets, and the Grafana
dashboard's metrics. No Kubernetes and no Ray cluster are needed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.loop_metrics import LOOP_METRIC_NAMES, METRIC_NAMES, SERVING_METRIC_NAMES
from core.config import expand_vars, load_config
from schemas.evaluate import EvalConfig
from schemas.ingest import IngestConfig
from schemas.serving import ServeConfig
from schemas.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
DASHBOARD = REPO / "infra" / "grafana" / "flywheel-dashboard.json"
KINDS = {
    "raycluster": "RayCluster",
    "rayjob": "RayJob",
    "rayservice": "RayService",
    "networkpolicy": "NetworkPolicy",
}
API_VERSIONS = {"NetworkPolicy": "networking.k8s.io/v1"}  # every other kind: KubeRay's ray.io/v1
JOB_SCHEMAS = {"ingest": IngestConfig, "train": TrainConfig, "evaluate": EvalConfig}
ENTRYPOINT = re.compile(r"^python -m jobs\.(\w+) --config (\S+)")
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
AWS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
RANDOM_LOOKING = re.compile(r"^(?=.*[a-z])(?=.*[A-Z])(?=.*[0-9])[A-Za-z0-9+/=_-]{32,}$")
RAY_PORTS = {8265, 10001}  # the dashboard / job API and the Ray client: both run code
RAY_PORT_NAMES = {"dashboard", "client"}  # their names in the head containers' ports
DASHBOARD_PORT, CLIENT_PORT, SERVE_PORT = 8265, 10001, 8000
# Ports only a cluster's own Ray pods may reach: the GCS, the dashboard agent, a worker port.
RAY_INTERNAL_PORTS = (6379, 52365, 10002)
NAMESPACE = "flywheel"  # the manifests name none: they go to whichever namespace is current
OPERATOR_NAMESPACE = "kuberay-system"  # infra/README.md installs KubeRay there; the policies say so


def load_manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


MANIFESTS = load_manifests()
IDS = [f"{name}:{doc.get('metadata', {}).get('name')}" for name, doc in MANIFESTS]
RAY_MANIFESTS = [(name, doc) for name, doc in MANIFESTS if doc["apiVersion"] == "ray.io/v1"]
RAY_IDS = [f"{name}:{doc.get('metadata', {}).get('name')}" for name, doc in RAY_MANIFESTS]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The RayCluster spec a resource creates (None: a RayJob on an existing cluster)."""
    spec = doc["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }.get(doc["kind"])


def pod_specs(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["template"]["spec"]


def walk(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, value) pair of a parsed document, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def runtime_env(job: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(job["spec"].get("runtimeEnvYAML", "")) or {}


def env_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in container.get("env", []) if e["name"] == name), None)


# -- every manifest -----------------------------------------------------------------------------


def test_manifests_exist_for_every_kind() -> None:
    assert {doc["kind"] for _, doc in MANIFESTS} == set(KINDS.values())


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=IDS)
def test_manifest_is_a_resource_of_its_kind(name: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == API_VERSIONS.get(doc["kind"], "ray.io/v1")
    assert doc["kind"] == KINDS[name.split("-")[0].removesuffix(".yaml")]
    assert doc["metadata"]["name"]


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=IDS)
def test_dashboard_and_job_api_stay_inside_the_cluster(name: str, doc: dict[str, Any]) -> None:
    cluster = cluster_spec(doc)
    dashboard_host_path = None
    if cluster is not None:
        head = cluster["headGroupSpec"]
        # Explicit, so the choice is reviewed: KubeRay binds 0.0.0.0 when it is unset. A head on
        # the pod network needs a NetworkPolicy (test_pod_network_dashboard_is_fenced_off).
        host = head["rayStartParams"].get("dashboard-host")
        assert host in {"127.0.0.1", "0.0.0.0"}, f"{name}: dashboard-host {host!r}, set it"
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        head_service = head.get("headService", {}).get("spec", {})
        assert head_service.get("type", "ClusterIP") == "ClusterIP"
        assert not head_service.get("externalIPs"), f"{name}: the head Service has externalIPs"
        assert head.get("enableIngress", False) is False
        cluster_path = next(path for path, value in walk(doc) if value is cluster)
        dashboard_host_path = (*cluster_path, "headGroupSpec", "rayStartParams", "dashboard-host")
    for path, value in walk(doc):
        if isinstance(value, str) and "0.0.0.0" in value:
            # Serve's proxy (the API-key gateway) and the dashboard-host checked above; nothing
            # else, a NetworkPolicy's ipBlock 0.0.0.0/0 included.
            allowed = {("spec", "serveConfigV2"), dashboard_host_path}
            assert path in allowed, f"{name}: 0.0.0.0 at {path}"
    assert doc["kind"] != "Ingress", f"{name}: an Ingress"
    if doc["kind"] == "Service":
        assert not doc["spec"].get("externalIPs"), f"{name}: a Service with externalIPs"
    if doc["kind"] == "Service" and doc["spec"].get("type") in {"NodePort", "LoadBalancer"}:
        ports = {v for p in doc["spec"]["ports"] for v in (p["port"], p.get("targetPort"))}
        exposed = ports & (RAY_PORTS | RAY_PORT_NAMES)
        assert not exposed, f"{name} exposes {exposed} outside the cluster"


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=IDS)
def test_no_secret_literals(name: str, doc: dict[str, Any]) -> None:
    for path, value in walk(doc):
        if path and path[-1] == "env" and isinstance(value, list):
            for entry in value:
                if SECRET_NAME.search(entry["name"]):
                    assert "value" not in entry, f"{name}: {entry['name']} is a literal"
                    assert entry["valueFrom"]["secretKeyRef"]["name"], entry
        if isinstance(value, str):
            assert not AWS_KEY.search(value), f"{name}: an AWS access key at {path}"
            assert not RANDOM_LOOKING.match(value), f"{name}: a secret-looking string at {path}"
    if doc["kind"] == "RayJob":
        env_vars = runtime_env(doc).get("env_vars", {})
        assert not [k for k in env_vars if SECRET_NAME.search(k)], "secrets in runtimeEnvYAML"


@pytest.mark.parametrize(("name", "doc"), RAY_MANIFESTS, ids=RAY_IDS)
def test_token_auth_on_every_ray_container(name: str, doc: dict[str, Any]) -> None:
    containers = []
    cluster = cluster_spec(doc)
    if cluster is not None:
        assert cluster["authOptions"] == {"mode": "token", "secretName": "flywheel-ray-auth"}
        containers += [c for pod in pod_specs(cluster) for c in pod["containers"]]
        if cluster.get("enableInTreeAutoscaling"):
            containers.append(cluster["autoscalerOptions"])
    if doc["kind"] == "RayJob":
        containers += doc["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert containers
    for container in containers:
        assert env_value(container, "RAY_AUTH_MODE") == {"name": "RAY_AUTH_MODE", "value": "token"}
        token = env_value(container, "RAY_AUTH_TOKEN")
        assert token is not None, f"{name}: {container.get('name')} has no RAY_AUTH_TOKEN"
        assert token["valueFrom"]["secretKeyRef"] == {
            "name": "flywheel-ray-auth",
            "key": "auth_token",  # KubeRay's key for authOptions.secretName
        }


# -- who reaches a head on the pod network: KubeRay's operator, yes; any other pod, no -------------


@dataclass(frozen=True)
class Pod:
    """A peer that opens a connection: a pod with its namespace and labels (namespace None: an
    address outside the Kubernetes cluster)."""

    what: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()


def pod(what: str, namespace: str | None, labels: dict[str, str] | None = None) -> Pod:
    return Pod(what, namespace, tuple(sorted((labels or {}).items())))


def template_labels(template: dict[str, Any]) -> dict[str, str]:
    return dict(template.get("metadata", {}).get("labels", {}))


def ray_pod_labels(doc: dict[str, Any], group: dict[str, Any], node_type: str) -> dict[str, str]:
    """A Ray pod's labels: its template's plus those KubeRay adds (it names a RayJob's or a
    RayService's cluster itself, with a suffix nothing can select on beforehand)."""
    name = doc["metadata"]["name"]
    return {
        **template_labels(group["template"]),
        "ray.io/cluster": name if doc["kind"] == "RayCluster" else f"{name}-x7k2p",
        "ray.io/node-type": node_type,
        "ray.io/is-ray-node": "yes",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }


def ray_pods(doc: dict[str, Any]) -> list[Pod]:
    cluster = cluster_spec(doc)
    if cluster is None:
        return []
    name = doc["metadata"]["name"]
    pods = [pod(f"{name} head", NAMESPACE, ray_pod_labels(doc, cluster["headGroupSpec"], "head"))]
    for group in cluster.get("workerGroupSpecs", []):
        labels = ray_pod_labels(doc, group, "worker")
        pods.append(pod(f"{name} {group['groupName']} worker", NAMESPACE, labels))
    return pods


def submitter(job: dict[str, Any]) -> Pod:
    # Only the labels the manifest gives its submitter pods, nothing KubeRay may add.
    labels = template_labels(job["spec"].get("submitterPodTemplate", {}))
    return pod(f"{job['metadata']['name']} submitter", NAMESPACE, labels)


def submitters_of(doc: dict[str, Any]) -> list[Pod]:
    """The RayJob submitter pods that call this resource's job API."""
    if doc["kind"] == "RayJob":
        return [submitter(doc)]
    if doc["kind"] == "RayCluster":
        selector = {"ray.io/cluster": doc["metadata"]["name"]}
        jobs = of_kind("RayJob")
        return [submitter(j) for j in jobs if j["spec"].get("clusterSelector") == selector]
    return []


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector, as the API server reads it: {} selects everything."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, values = expr["key"], expr.get("values", [])
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[expr["operator"]]
        if not holds:
            return False
    return True


def peer_admits(peer: dict[str, Any], source: Pod) -> bool:
    if "ipBlock" in peer:
        return True  # an address range may hold any pod, or anything outside the cluster
    if source.namespace is None:
        return False
    namespaces = peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = source.namespace == NAMESPACE  # podSelector alone: the policy's namespace
    else:
        in_namespace = selects(namespaces, {"kubernetes.io/metadata.name": source.namespace})
    return in_namespace and selects(peer.get("podSelector", {}), dict(source.labels))


def rule_ports(rule: dict[str, Any], named: dict[str, int]) -> list[tuple[int, int]] | None:
    """The TCP port ranges a rule admits (None: every port); names resolve on the head."""
    if not rule.get("ports"):
        return None
    ranges = []
    for entry in rule["ports"]:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        port = entry.get("port")
        if port is None:
            return None
        port = named.get(port, -1) if isinstance(port, str) else port
        ranges.append((port, entry.get("endPort", port)))
    return ranges


def covers(rule: dict[str, Any], port: int, named: dict[str, int]) -> bool:
    ranges = rule_ports(rule, named)
    return ranges is None or any(low <= port <= high for low, high in ranges)


def head_policies(head: Pod) -> list[dict[str, Any]]:
    """The NetworkPolicies in infra/k8s that isolate this head pod for ingress."""
    return [
        policy
        for policy in of_kind("NetworkPolicy")
        if policy["metadata"].get("namespace", NAMESPACE) == NAMESPACE
        and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], dict(head.labels))
    ]


def admitted(head: Pod, named: dict[str, int], port: int, source: Pod) -> bool:
    """Would Kubernetes let `source` open `port` on `head`, given infra/k8s's NetworkPolicies?"""
    policies = head_policies(head)
    if not policies:
        return True  # a pod no policy selects accepts every connection
    return any(
        covers(rule, port, named)
        and (not rule.get("from") or any(peer_admits(peer, source) for peer in rule["from"]))
        for policy in policies
        for rule in policy["spec"].get("ingress") or []
    )


def head_ports(cluster: dict[str, Any]) -> dict[str, int]:
    container = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}


def operator_reaches(doc: dict[str, Any]) -> bool:
    """KubeRay's operator drives this resource through the head's dashboard: a RayJob, a
    RayService, or a RayCluster that a RayJob selects."""
    return doc["kind"] in {"RayJob", "RayService"} or bool(submitters_of(doc))


CLUSTERS = [doc for _, doc in RAY_MANIFESTS if cluster_spec(doc)]
CLUSTER_IDS = [doc["metadata"]["name"] for doc in CLUSTERS]


@pytest.mark.parametrize("doc", CLUSTERS, ids=CLUSTER_IDS)
def test_operator_reaches_the_dashboards_it_drives(doc: dict[str, Any]) -> None:
    # On loopback, a RayJob fails at submission and a RayService never becomes ready.
    host = cluster_spec(doc)["headGroupSpec"]["rayStartParams"]["dashboard-host"]
    if operator_reaches(doc):
        assert host == "0.0.0.0", f"{doc['metadata']['name']}: the operator cannot reach {host}"


@pytest.mark.parametrize("doc", CLUSTERS, ids=CLUSTER_IDS)
def test_pod_network_dashboard_is_fenced_off(doc: dict[str, Any]) -> None:
    cluster = cluster_spec(doc)
    if cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] != "0.0.0.0":
        return  # on loopback: only `kubectl port-forward` reaches it
    name = doc["metadata"]["name"]
    head, *workers = ray_pods(doc)
    named = head_ports(cluster)
    policies = head_policies(head)
    assert policies, f"{name}: no NetworkPolicy in infra/k8s selects its head pod"

    # Read as written: every rule that opens the job API names who it opens it to.
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            if not (covers(rule, DASHBOARD_PORT, named) or covers(rule, CLIENT_PORT, named)):
                continue
            ports = rule_ports(rule, named) or "every port"
            where = f"{policy['metadata']['name']}: its rule for {ports}"
            assert rule.get("from"), f"{where} admits every source"
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"{where} admits an address range"
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"], f"{where} admits every namespace"
                else:
                    assert peer.get("podSelector"), f"{where} admits every pod of the namespace"

    # And as Kubernetes applies it.
    operator = pod("the KubeRay operator", OPERATOR_NAMESPACE, {"app.kubernetes.io/name": "x"})
    own_submitters = submitters_of(doc)
    others = [p for _, d in RAY_MANIFESTS if d is not doc for p in ray_pods(d)]
    others += [s for _, d in RAY_MANIFESTS if d is not doc for s in submitters_of(d)]
    others = [p for p in others if p not in own_submitters]
    strangers = [
        pod("a pod of the namespace", NAMESPACE, {"app": "web"}),
        pod("an unlabelled pod of the namespace", NAMESPACE),
        pod("a pod of another namespace", "default", {"app": "web"}),
        *(pod(f"{w.what}, in another namespace", "default", dict(w.labels)) for w in workers),
        pod("outside the cluster", None),
        *others,
    ]
    for port in (DASHBOARD_PORT, CLIENT_PORT):
        for peer in [operator, *workers]:
            assert admitted(head, named, port, peer), f"{name}:{port} refuses {peer.what}"
        for peer in strangers:
            assert not admitted(head, named, port, peer), f"{name}:{port} admits {peer.what}"
    for peer in own_submitters:
        assert admitted(head, named, DASHBOARD_PORT, peer), f"{name} refuses {peer.what}"
    for port in RAY_INTERNAL_PORTS:
        for peer in workers:
            assert admitted(head, named, port, peer), f"{name}:{port} refuses {peer.what}"
        for peer in [operator, *own_submitters, *strangers]:
            assert not admitted(head, named, port, peer), f"{name}:{port} admits {peer.what}"
    if named.get("serve") == SERVE_PORT:
        # The gateway: any pod of the namespace, through the serve Service; no other namespace.
        assert admitted(head, named, SERVE_PORT, strangers[0]), f"{name}: the proxy is closed"
        assert not admitted(head, named, SERVE_PORT, strangers[2]), f"{name}: proxy admits all"


# -- the RayService ----------------------------------------------------------------------------


def test_rayservice_serve_config_is_infra_serve_yaml() -> None:
    from ray.serve.schema import ServeDeploySchema

    (service,) = of_kind("RayService")
    on_cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(on_cluster)
    local = yaml.safe_load((REPO / "infra" / "serve.yaml").read_text())
    # The one difference: on a cluster the proxy listens on the pod's interfaces so that
    # KubeRay's Serve Service reaches it; locally it stays on loopback.
    assert on_cluster.pop("http_options") == {"host": "0.0.0.0", "port": 8000}
    assert local.pop("http_options") == {"host": "127.0.0.1", "port": 8000}
    assert on_cluster == local
    assert on_cluster["applications"] == local["applications"]


def test_rayservice_applications_resolve_to_s3() -> None:
    (service,) = of_kind("RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    environ = {e["name"]: e["value"] for e in head["containers"][0]["env"] if "value" in e}
    for app in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]:
        cfg = ServeConfig.model_validate(expand_vars(app["args"], environ))
        assert cfg.registry_uri.startswith("s3://") and cfg.event_log_uri.startswith("s3://")


def test_rayservice_event_wal_is_on_the_head_s_volume_and_drained_before_it_goes() -> None:
    (service,) = of_kind("RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    container = head["containers"][0]
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    cfg = ServeConfig.model_validate(expand_vars(app["args"], environ))
    wal = cfg.event_wal_dir
    assert cfg.event_acks == "store", "the emptyDir goes with the pod: ack once in storage"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert wal in mounts, (wal, mounts)
    assert mounts[wal] in {v["name"] for v in head["volumes"]}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["flywheel", "events", "flush"]
    assert head["terminationGracePeriodSeconds"] >= 60


# -- the RayJobs -------------------------------------------------------------------------------


def job_entrypoint(job: dict[str, Any]) -> tuple[str, str]:
    match = ENTRYPOINT.match(" ".join(job["spec"]["entrypoint"].split()))
    assert match, f"{job['metadata']['name']}: not `python -m jobs.X --config PATH`"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("job", of_kind("RayJob"), ids=lambda j: j["metadata"]["name"])
def test_job_entrypoint_names_a_job_and_a_valid_recipe(job: dict[str, Any]) -> None:
    module, config = job_entrypoint(job)
    assert (REPO / "jobs" / f"{module}.py").is_file(), f"no module jobs/{module}.py"
    env = runtime_env(job)
    assert env["working_dir"] and isinstance(env["env_vars"], dict)
    if "://" in config:
        return  # an object-storage config (the loop's eval.json), read by the job itself
    assert (REPO / config).is_file(), f"no recipe {config}"
    load_config(JOB_SCHEMAS[module], REPO / config, environ={"FLYWHEEL_HOME": "/tmp/fw"})
    # With the job's own environment, nothing the recipe reads or writes is a local path:
    # on a cluster that would be the disk of whichever pod runs the driver.
    cfg = load_config(JOB_SCHEMAS[module], REPO / config, environ=env["env_vars"])
    for path, value in walk(cfg.model_dump()):
        if path and str(path[-1]).endswith("uri") and value is not None:
            assert value.startswith("s3://"), f"{config}: {'.'.join(map(str, path))}={value}"


@pytest.mark.parametrize("job", of_kind("RayJob"), ids=lambda j: j["metadata"]["name"])
def test_job_runs_on_one_cluster_and_cleans_up_only_its_own(job: dict[str, Any]) -> None:
    spec = job["spec"]
    assert ("clusterSelector" in spec) != ("rayClusterSpec" in spec)
    if "clusterSelector" in spec:
        (cluster,) = of_kind("RayCluster")
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert spec.get("shutdownAfterJobFinishes", False) is False
    else:
        assert spec["shutdownAfterJobFinishes"] is True


def test_train_job_cluster_fits_its_recipe() -> None:
    (job,) = [j for j in of_kind("RayJob") if job_entrypoint(j)[0] == "train"]
    cfg = load_config(TrainConfig, REPO / job_entrypoint(job)[1], environ={})
    gpus_needed = cfg.scaling.num_workers * cfg.scaling.resources_per_worker.get("GPU", 0)
    gpus, cpus = 0, []
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus += group["maxReplicas"] * int(limits.get("nvidia.com/gpu", 0))
        cpus.append(float(limits["cpu"]))
    assert cfg.scaling.use_gpu and gpus >= gpus_needed
    assert min(cpus) >= cfg.scaling.resources_per_worker.get("CPU", 1)
    # The workers pick the accelerator from scaling.use_gpu; nothing may force them to cpu.
    assert runtime_env(job)["env_vars"].get("DS_ACCELERATOR", "cuda") == "cuda"


def test_shared_cluster_scales_gpu_workers_from_zero() -> None:
    (cluster,) = of_kind("RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    gpu_groups = [
        g
        for g in cluster["spec"]["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups and all(g["minReplicas"] == 0 < g["maxReplicas"] for g in gpu_groups)


# -- metrics and the Grafana dashboard ---------------------------------------------------------


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    for panel in board["panels"]:
        for node in [panel, *panel.get("targets", [])]:
            if "datasource" in node:
                assert node["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_dashboard_metrics_are_registered_and_all_shown() -> None:
    used = set()
    for expr in dashboard_queries():
        for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
            if "flywheel_" not in name:
                continue
            assert name.startswith("ray_flywheel_"), f"{name}: Ray exports it as ray_{name}"
            used.add(re.sub(r"_(bucket|sum|count)$", "", name.removeprefix("ray_")))
    assert used <= set(METRIC_NAMES), f"not registered: {sorted(used - set(METRIC_NAMES))}"
    assert used == set(METRIC_NAMES), f"no panel for: {sorted(set(METRIC_NAMES) - used)}"


def test_metric_names_match_what_the_code_registers() -> None:
    from actors.loop_metrics import loop_metrics

    assert sorted(METRIC_NAMES) == sorted({*SERVING_METRIC_NAMES, *LOOP_METRIC_NAMES})
    serving = "".join(path.read_text() for path in (REPO / "serve_apps").glob("*.py"))
    for name in SERVING_METRIC_NAMES:
        assert f'"{name}"' in serving, f"{name} is not registered by the serving code"
    loop_source = (REPO / "actors" / "loop_metrics.py").read_text()
    assert all(f'"{name}"' in loop_source for name in LOOP_METRIC_NAMES)
    assert sorted(g.info["name"] for g in loop_metrics().values()) == sorted(LOOP_METRIC_NAMES)
    # And the other way: every metric any module registers is listed.
    registered = set()
    for path in REPO.glob("[!.]*/**/*.py"):
        registered |= set(re.findall(r'metrics\.\w+\(\s*"(flywheel_\w+)"', path.read_text()))
    assert registered == set(METRIC_NAMES)
