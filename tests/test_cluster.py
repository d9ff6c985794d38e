"""run --ray on a Ray cluster of several nodes on this machine (127.0.0.1 only, token authentication), with
the fake engine: the same reports as a local run, and actors, nodes and the driver lost mid-run."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

import edgeeval
from cli_support import run_cli
from conftest import make_project
from edgeeval.store import load_records

N_SAMPLE = 36
MODELS = ("general-small", "bio-small")

if os.environ.get("CI"):
    import ray  # noqa: F401 - CI installs the ray extra: a skip there would hide a broken set-up
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (no CPUs: the driver only) and two 4-CPU nodes, all on 127.0.0.1, with a token; torn down
    after the module. Ray's processes inherit this environment (and PYTHONPATH: this checkout)."""
    from ray.cluster_utils import Cluster

    saved = dict(os.environ)
    private = tempfile.mkdtemp(prefix="ee-ray-")
    os.environ.update({"RAY_TMPDIR": private, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"})
    # Ray read these when it was imported: refresh what it took from them, as ray.init does for its own token.
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    ray._raylet.Config.initialize("")
    ray._raylet.AuthenticationTokenLoader.instance().reset_cache()
    # A lost node is noticed in about 5 s rather than Ray's default 15-30 s.
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}
    head = {"num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * 2**20, "_system_config": health}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=4, object_store_memory=100 * 2**20)
        yield cluster
    finally:
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("cluster"))


def run_args(project: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--pair", "test", "--task", "case_challenges", "--engine", "fake", "--threads", "1",
            "--models-dir", str(project.parent / "models"), "--out", str(out), "--quiet", *extra]


def assert_complete(out: Path) -> None:
    for model in MODELS:
        ids = [r.example_id for r in load_records(out, model, "case_challenges")]
        assert len(ids) == N_SAMPLE == len(set(ids)), model


def wait_for_records(out: Path, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    path = out / "records" / "general-small" / "case_challenges.jsonl"
    while time.time() < deadline and (not path.exists() or len(path.read_bytes().splitlines()) < n):
        time.sleep(0.05)


def in_background(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_ray_run_writes_the_reports_of_a_local_run(cluster, project, tmp_path):
    local, spread = tmp_path / "local", tmp_path / "ray"
    assert run_cli(project, *run_args(project, local)) == 0
    assert run_cli(project, *run_args(project, spread, "--ray", cluster.address, "--workers", "2", "--chunk", "5")) == 0
    for name in ("results.csv", "comparison.csv"):
        assert (spread / name).read_bytes() == (local / name).read_bytes()
    assert_complete(spread)
    records = load_records(spread, "bio-small", "case_challenges")
    manifest = json.loads((spread / "manifest.json").read_text())
    assert {r.node for r in records} <= set(manifest["nodes"]) and len(manifest["nodes"]) == 2
    assert all(node["system_info"] for node in manifest["nodes"].values())
    assert manifest["invocations"][-1]["workers_per_model"] == 2
    for record in records:
        import edgeeval  # the actors ran this checkout's edgeeval, as the driver did
        assert Path(edgeeval.__file__).is_relative_to(Path(__file__).resolve().parent.parent)


def actor_pids(cluster) -> list[int]:
    """This cluster's ModelWorker actor processes (descendants of its raylets)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    raylets = [info.process.pid for node in cluster.list_all_nodes()
               for info in node.all_processes.get(ray._private.ray_constants.PROCESS_TYPE_RAYLET, [])]
    found, todo = [], list(raylets)
    while todo:
        pid = todo.pop()
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ModelWorker"):
                found.append(pid)
        except OSError:
            pass
        todo.extend(children.get(pid, []))
    return found


def test_an_actor_killed_mid_run_costs_at_most_its_chunk(cluster, project, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("EDGEEVAL_FAKE_DELAY_S", "0.15")
    killed = []

    def kill_one():
        wait_for_records(out, 4)
        pids = actor_pids(cluster)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    thread = in_background(kill_one)
    assert run_cli(project, *run_args(project, out, "--ray", cluster.address, "--workers", "2")) == 0
    thread.join()
    assert killed, "no actor process found to kill"
    assert_complete(out)
    invocation = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    assert len(invocation["node_problems"]) == 1 and "lost" in invocation["node_problems"][0]
    assert invocation["units_given_back"] <= 8  # the default chunk


def test_a_node_removed_mid_run(cluster, project, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setenv("EDGEEVAL_FAKE_DELAY_S", "0.15")
    extra = cluster.add_node(num_cpus=4, object_store_memory=100 * 2**20)

    def remove():
        wait_for_records(out, 4)
        cluster.remove_node(extra, allow_graceful=False)

    thread = in_background(remove)
    assert run_cli(project, *run_args(project, out, "--ray", cluster.address, "--workers", "3")) == 0
    thread.join()
    assert_complete(out)
    invocation = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    assert invocation["units_given_back"] <= 8 * len(invocation["node_problems"])


def test_a_node_without_the_model_is_named_and_the_rest_finish(cluster, project, tmp_path, monkeypatch, capsys):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from edgeeval.cluster import ModelWorker, NodeUnusable, ray_session
    from edgeeval.config import load_models_config
    from edgeeval.engine import EngineSettings
    from edgeeval.planning import prepare_model

    out = tmp_path / "run"
    empty = tmp_path / "no-models"
    empty.mkdir()
    monkeypatch.setenv("EDGEEVAL_MODELS_DIR", str(empty))  # what this node's processes will see
    bad = cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    monkeypatch.delenv("EDGEEVAL_MODELS_DIR")
    try:
        # An actor on that node refuses to take work, naming the node, the model and where it looked.
        loaded = load_models_config(project / "models.toml", project.parent / "models")
        model = prepare_model(loaded, "bio-small")
        with ray_session(cluster.address) as ray_:
            actor = ray_.remote(ModelWorker).options(
                num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(bad.node_id, soft=False)).remote(
                loaded, replace(model, chat=None), EngineSettings(backend="fake", n_threads=1), 1, edgeeval.__version__)
            with pytest.raises(ray_.exceptions.RayTaskError) as refused:
                ray_.get(actor.start.remote(), timeout=120)
        assert isinstance(refused.value.cause, NodeUnusable)
        message = str(refused.value.cause)
        assert f"/{bad.node_id[:8]}: model 'bio-small'" in message and "file not found" in message
        assert str(empty) in message
        # A run with that node in the cluster finishes on the others; if one of its actors was placed there
        # before the work was done, the error names the node.
        assert run_cli(project, *run_args(project, out, "--ray", cluster.address, "--workers", "3")) == 0
    finally:
        cluster.remove_node(bad)
    assert_complete(out)
    err = capsys.readouterr().err
    assert "file not found" not in err or f"/{bad.node_id[:8]}: model '" in err


def test_a_killed_driver_resumes_without_ray(cluster, project, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgeeval.cli", *run_args(project, out, "--ray", cluster.address, "--workers", "1")]
    proc = subprocess.Popen(cmd, cwd=project, env={**os.environ, "EDGEEVAL_FAKE_DELAY_S": "0.1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_records(out, 5, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(load_records(out, "general-small", "case_challenges"))
    assert 5 <= done < N_SAMPLE
    assert run_cli(project, *run_args(project, out)) == 0
    assert_complete(out)


def test_joining_a_cluster_without_token_authentication_is_refused(project, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert run_cli(project, *run_args(project, tmp_path / "run", "--ray", "10.0.0.7:6379")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RAY_AUTH_MODE=token" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.real_model
def test_demo_pair_on_two_single_thread_actors_answers_as_the_local_run(tmp_path, real_models):
    """The demo models through `--ray` (a private local instance, one single-thread actor per model) give
    the local run's answers; a fresh process, as a user runs it."""
    from conftest import ROOT

    args = ["run", "--pair", "demo", "--task", "case_challenges", "--limit", "4", "--max-tokens", "24",
            "--threads", "1", "--quiet"]
    assert run_cli(ROOT, *args, "--out", str(tmp_path / "local")) == 0
    result = subprocess.run([sys.executable, "-m", "edgeeval.cli", *args, "--out", str(tmp_path / "ray"), "--ray",
                             "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for model in ("gemma3-270m", "smollm2-135m-instruct"):
        local, spread = (sorted((r.example_id, r.prompt_hash, r.output, r.error)
                                for r in load_records(tmp_path / run, model, "case_challenges"))
                         for run in ("local", "ray"))
        assert local == spread, model
