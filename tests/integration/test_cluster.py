"""A real two-node Ray cluster on this machine, started the way an operator starts one
(``ray start --head``, then ``ray start --address`` for a second node), token auth on.

Against it, through the interfaces a user has: ingest and training submitted with
``ray job submit --working-dir .``, the Serve app deployed with ``serve deploy`` from a config
derived from ``infra/serve.yaml`` and asked a chat completion over HTTP on loopback, the loop
controller's own job path (a controller resumed in its evaluating phase submits the
evaluation job there), and clients without the token refused.

Nothing here joins the cluster from the pytest process (it may hold the session's local Ray):
clients are subprocesses or HTTP. ``ray stop`` would stop every Ray process on the machine,
so teardown stops only this cluster's (see ``ClusterProcesses``) and checks none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from core import storage
from core.data.snapshots import list_snapshots
from core.loop.statelog import read_state
from core.registry import ModelRegistry
from demo.corpus import generate_corpus
from jobs.runtime import free_port
from tests.tinymodel import loop_settings, make_tiny_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: python, ray, serve
API_KEY = "cluster-test-key-0123456789"
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 240
SERVE_TIMEOUT_S = 150


@dataclass
class RayCluster:
    """A running cluster and what its clients need."""

    root: Path  # private temp dir of the nodes
    env: dict[str, str]  # environment of every node and client: venv first on PATH, the token
    token: str
    gcs: str  # host:port
    dashboard: str  # http://host:port, the job and Serve REST API
    home: Path  # FLYWHEEL_HOME of the jobs and the Serve app: all storage of the test

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def cli(self, *args: str, timeout: float, env: dict[str, str] | None = None):
        """Run a command of the venv (``ray ...``, ``serve ...``) from the repository."""
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            cwd=REPO,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def job(self, submission_id: str) -> dict:
        r = httpx.get(f"{self.dashboard}/api/jobs/{submission_id}", headers=self.auth, timeout=30)
        assert r.status_code == 200, f"job {submission_id}: HTTP {r.status_code} {r.text[:500]}"
        return r.json()

    def job_logs(self, submission_id: str) -> str:
        r = httpx.get(
            f"{self.dashboard}/api/jobs/{submission_id}/logs", headers=self.auth, timeout=30
        )
        return r.json().get("logs", "") if r.status_code == 200 else f"HTTP {r.status_code}"

    def alive_nodes(self) -> list[dict]:
        r = httpx.get(f"{self.dashboard}/api/v0/nodes", headers=self.auth, timeout=30)
        if r.status_code != 200:
            return []
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]


@dataclass
class ClusterProcesses:
    """How to find every process of the cluster. ``ray start`` exits and its daemons live on
    as orphans: most name the temp dir ``root``, and all keep the session id of the ``ray
    start`` that spawned them (its pid), though the Ray Client server names neither. Workers
    rename themselves (``ray::...``) and job drivers start sessions of their own, but all
    descend from a raylet."""

    root: Path
    sessions: set[int] = field(default_factory=set)

    def find(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                ours = os.getsid(proc.pid) in self.sessions
                if ours or str(self.root) in " ".join(proc.info["cmdline"] or []):
                    found[proc.pid] = proc
                    found.update({c.pid: c for c in proc.children(recursive=True)})
        return [p for p in found.values() if _running(p)]

    def stop(self) -> list[str]:
        """SIGTERM them all, SIGKILL what outlives 5 s; returns what is still running."""
        for _ in range(3):  # a dying raylet may still start a worker: look again
            procs = self.find()
            if not procs:
                return []
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            _, alive = psutil.wait_procs(procs, timeout=5)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(alive, timeout=5)
        return [f"{p.pid} {p.name()}" for p in self.find()]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cluster_env(token: str) -> dict[str, str]:
    """This process's environment without its Ray settings, plus the cluster's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FLYWHEEL_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # job drivers run plain `python`
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TORCH_EXTENSIONS_DIR=os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(REPO / ".flywheel" / "torch_extensions")
        ),
        TOKENIZERS_PARALLELISM="true",
        # Fixed by default (44217, 44227): two heads on one machine would collide.
        AUTOSCALER_METRIC_PORT=str(free_port()),
        DASHBOARD_METRIC_PORT=str(free_port()),
    )
    return env


def node_args(root: Path, name: str) -> list[str]:
    """Flags every node gets: one CPU, its own temp dir, free ports. Ray rewrites a loopback
    node address to the machine's own (``services.resolve_ip_for_localhost``: nodes must reach
    each other) and its core gRPC servers listen on every interface, as any Ray on Linux
    does; the dashboard and Serve's proxy are the listeners that can be, and are, loopback."""
    return [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--object-store-memory=200000000",
        f"--temp-dir={root / name}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--min-worker-port=0",  # any free port, as ray.init does
        "--max-worker-port=0",
    ]


def ray_start(processes: ClusterProcesses, env: dict[str, str], name: str, args: list[str]) -> None:
    """``ray start`` in a session of its own; its output goes to a file (the daemons it
    leaves must not hold a pipe of ours)."""
    log = processes.root / f"ray-start-{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.sessions.add(proc.pid)  # before waiting: a failed start may leave daemons
        try:
            rc = proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, f"ray start ({name}) exited {rc}:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> RayCluster:
    # A short private root under /tmp: Ray's socket paths must stay under 108 bytes.
    processes = ClusterProcesses(Path(tempfile.mkdtemp(prefix="fwcluster-", dir="/tmp")))
    root = processes.root
    token = uuid.uuid4().hex
    env = cluster_env(token)
    gcs_port, dash_port = free_port(), free_port()
    home = tmp_path_factory.mktemp("cluster-home")
    try:
        ray_start(
            processes,
            env,
            "head",
            [
                "--head",
                f"--port={gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                f"--ray-client-server-port={free_port()}",
                *node_args(root, "head"),
            ],
        )
        gcs = f"127.0.0.1:{gcs_port}"
        ray_start(processes, env, "worker", [f"--address={gcs}", *node_args(root, "worker")])
        c = RayCluster(root, env, token, gcs, f"http://127.0.0.1:{dash_port}", home)
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(c.alive_nodes()) < 2:
            assert time.monotonic() < deadline, f"2 nodes never alive: {c.alive_nodes()}"
            time.sleep(1)
        yield c
    finally:
        leftovers = processes.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes of the cluster outlived teardown: {leftovers}"


def submit(cluster: RayCluster, submission_id: str, *entrypoint: str) -> dict:
    """``ray job submit --working-dir .`` as a user runs it; waits; returns the job's info."""
    runtime_env = {"env_vars": {"FLYWHEEL_HOME": str(cluster.home)}}
    try:
        proc = cluster.cli(
            "ray",
            "job",
            "submit",
            f"--address={cluster.dashboard}",
            f"--submission-id={submission_id}",
            "--working-dir=.",
            f"--runtime-env-json={json.dumps(runtime_env)}",
            "--",
            *entrypoint,
            timeout=JOB_TIMEOUT_S,
        )
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        output = f"timed out after {JOB_TIMEOUT_S}s; job logs:\n{cluster.job_logs(submission_id)}"
    info = cluster.job(submission_id)
    assert info["status"] == "SUCCEEDED", (
        f"job {submission_id} ended {info['status']} ({info.get('message')}):\n{output[-4000:]}"
    )
    return info


@pytest.fixture(scope="module")
def trained(cluster: RayCluster) -> dict:
    """Ingest (pretrained chat tokenizer of a tiny base) and a short training run, as jobs."""
    home = cluster.home
    base = make_tiny_model(home / "models" / "tiny-base")  # its tokenizer has a chat template
    generate_corpus(home / "store" / "corpus", target_bytes=100_000, seed=3)
    ingest = submit(
        cluster,
        "cluster-ingest",
        *("python", "-m", "jobs.ingest", "--config", "jobs/configs/ingest-tiny.yaml"),
        *("--set", "tokenizer.kind=pretrained", "--set", f"tokenizer.uri={base}"),
    )
    train = submit(
        cluster,
        "cluster-train",
        *("python", "-m", "jobs.train", "--config", "jobs/configs/train-tiny.yaml"),
        *("--set", "optim.max_steps=6", "--set", "optim.warmup_steps=1"),
        *("--set", "checkpoint.every_steps=6", "--set", "metrics.log_every_steps=2"),
        *("--set", "registry.alias=production"),
    )
    dataset = home / "store" / "datasets" / "tiny"
    (snapshot_id,) = list_snapshots(str(dataset))
    return {
        "jobs": [ingest, train],
        "snapshot_id": snapshot_id,
        "snapshot_uri": str(dataset / "snapshots" / snapshot_id),
        "registry": ModelRegistry(str(home / "store" / "registry")),
    }


def test_clients_without_the_token_are_refused(cluster: RayCluster) -> None:
    """The job API (HTTP) and the GCS (gRPC) both check the token."""
    url = f"{cluster.dashboard}/api/jobs/"
    assert httpx.get(url, headers=cluster.auth, timeout=30).status_code == 200
    bare = httpx.get(url, timeout=30)
    assert bare.status_code in (401, 403), f"no token: HTTP {bare.status_code} {bare.text[:300]}"
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token"}, timeout=30)
    assert wrong.status_code in (401, 403), f"wrong token: HTTP {wrong.status_code}"
    env = {**cluster.env, "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    for command, address in (("job list", cluster.dashboard), ("status", cluster.gcs)):
        proc = cluster.cli("ray", *command.split(), f"--address={address}", timeout=60, env=env)
        out = (proc.stdout + proc.stderr)[-2000:]
        assert proc.returncode != 0, f"`ray {command}` with a wrong token succeeded:\n{out}"
        assert "token" in out.lower(), f"`ray {command}`: no token error in:\n{out}"


def test_ingest_and_train_jobs_register_a_version(cluster: RayCluster, trained: dict) -> None:
    assert len(cluster.alive_nodes()) == 2
    registry: ModelRegistry = trained["registry"]
    assert [v.version for v in registry.versions("tiny")] == [1]
    version = registry.get("tiny@production")
    assert version.ref == "tiny:1" and version.lineage.job == "tiny-pretrain"
    assert version.lineage.dataset_snapshots[0].snapshot_id == trained["snapshot_id"]
    assert len(version.metrics["curve"]) == 6 and version.metrics["tokens_per_s"] > 0
    for info in trained["jobs"]:
        assert info["entrypoint"].startswith("python -m jobs."), info["entrypoint"]


def test_generate_job_answers_every_prompt(cluster: RayCluster, trained: dict) -> None:
    """``jobs.generate`` submitted as a user submits it: the recipe in jobs/configs, on the
    trained version's alias, its Ray Data actors spread over the two nodes' CPUs."""
    prompts = cluster.home / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"The Heron H{i} pairs with"} for i in range(20)]
    (prompts / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    submit(
        cluster,
        "cluster-generate",
        *("python", "-m", "jobs.generate", "--config", "jobs/configs/generate-demo.yaml"),
        *("--set", "model=tiny@production", "--set", "engine.kind=hf"),
        *("--set", "engine.num_cpus=0.5", "--set", "engine.batch_size=8"),
        *("--set", "sampling.max_tokens=8"),
    )
    out = cluster.home / "store" / "generations" / "demo"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model"] == "tiny:1" and manifest["rows"] == 20, manifest
    assert manifest["errors"] == 0 and manifest["duplicates"] == 0
    assert manifest["completion_tokens"] > 0 and len(manifest["parts"]) >= 3  # batches of 8


def serve_config(cluster: RayCluster, port: int) -> Path:
    """``infra/serve.yaml`` with a free loopback port, fractional CPUs, the test's home and an
    API key from the application's environment (as a Secret would give it)."""
    raw = yaml.safe_load((REPO / "infra" / "serve.yaml").read_text())
    raw["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = raw["applications"]
    app["runtime_env"] = {
        "env_vars": {"FLYWHEEL_HOME": str(cluster.home), "FLYWHEEL_API_KEYS": API_KEY}
    }
    args = app["args"]
    args["default_model"] = "tiny"
    args["event_wal_dir"] = str(cluster.home / "wal")
    args["generator"]["num_cpus"] = 0.5
    # The config's engine (vLLM) without graph compilation: starts in under a minute here.
    args["generator"].setdefault("vllm", {})["enforce_eager"] = True
    args["generator"]["preload"] = ["tiny@production"]  # the replica is ready when it is
    args["generator"]["autoscaling"].update(min_replicas=1, max_replicas=1)
    path = cluster.home / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_serve_deploy_answers_a_chat_completion(cluster: RayCluster, trained: dict) -> None:
    from cli.serving import load_serve_config

    port = free_port()
    config = serve_config(cluster, port)
    load_serve_config(config)  # Ray's schema and ours, as `flywheel serve` checks it
    deploy = cluster.cli(
        "serve", "deploy", str(config), f"--address={cluster.dashboard}", timeout=60
    )
    assert deploy.returncode == 0, f"serve deploy failed:\n{deploy.stdout}{deploy.stderr}"
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                break
        assert time.monotonic() < deadline, (
            f"gateway not up in {SERVE_TIMEOUT_S}s; serve status:\n{serve_status(cluster)}"
        )
        time.sleep(2)
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What is the warranty?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    url = f"{base}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=60).status_code == 401, "no API key, no answer"
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    assert r.status_code == 200, f"chat completion: HTTP {r.status_code} {r.text[:1000]}"
    chat = r.json()
    assert chat["system_fingerprint"] == "tiny:1", chat
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(chat["choices"][0]["message"]["content"], str)
    assert 1 <= chat["usage"]["completion_tokens"] <= 8
    listening = {
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}, f"Serve's proxy listens on {listening}"


def serve_status(cluster: RayCluster) -> str:
    proc = cluster.cli("serve", "status", f"--address={cluster.dashboard}", timeout=60)
    return (proc.stdout + proc.stderr)[-3000:]


def resume_controller(config_path: str, timeout_s: float) -> None:
    """Run in a subprocess: a loop controller whose persisted state says it died while
    evaluating picks the cycle up and ticks until it decides (the job goes to the cluster
    through ``LoopController._run_job``, the controller's only way to submit)."""
    from actors.controller import LoopController
    from actors.feedback import FeedbackConsumer

    cfg = json.loads(Path(config_path).read_text())
    controller = LoopController(cfg, FeedbackConsumer(cfg))
    deadline = time.monotonic() + timeout_s
    while controller.tick()["phase"] == "evaluating":
        if time.monotonic() > deadline:
            raise TimeoutError(f"still evaluating after {timeout_s}s: {controller.status()}")
        time.sleep(1)


def test_loop_controller_runs_its_job_on_the_cluster(cluster: RayCluster, trained: dict) -> None:
    store = cluster.home / "store"
    cfg = loop_settings(
        store,
        "tiny",
        evaluate={"max_heldout_blocks": 8},
        jobs={"address": cluster.dashboard, "working_dir": str(REPO)},
    )
    config = cluster.home / "loop.json"
    config.write_text(json.dumps(cfg))
    # The single state file from before the versioned log: the controller takes it up.
    state = store / "loop" / "controller" / "state.json"
    state.parent.mkdir(parents=True)
    # Evaluating tiny:1 against itself: the gate must reject it (no gain on the feedback set).
    current = {"reason": "resumed", "production": "tiny:1", "candidate": "tiny:1"}
    current["eval_snapshot_uri"] = trained["snapshot_uri"]
    state.write_text(
        json.dumps(
            {
                "phase": "evaluating",
                "cycle": 1,
                "paused": False,
                "force": False,
                "last_trigger_at": None,
                "current": current,
                "history": [],
            }
        )
    )
    code = (
        "import sys; from tests.integration.test_cluster import resume_controller; "
        "resume_controller(sys.argv[1], float(sys.argv[2]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(config), str(JOB_TIMEOUT_S - 30)],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"controller failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    (cycle,) = read_state(storage.resolve(str(state.parent / "states")))["history"]
    job_id = cycle["eval_job"]
    info = cluster.job(job_id)
    assert info["status"] == "SUCCEEDED", f"{job_id}: {info}\n{cluster.job_logs(job_id)[-3000:]}"
    assert info["entrypoint"].startswith("python -m jobs.evaluate"), info["entrypoint"]
    assert cycle["outcome"] == "rejected" and "margin" in cycle["outcome_reason"], cycle
    registry: ModelRegistry = trained["registry"]
    assert any(r.get("kind") == "evaluation" for r in registry.eval_reports("tiny:1"))
    submits = [e for e in registry.audit.entries() if e.action == "job.submit"]
    assert [e.subject for e in submits] == [job_id]
