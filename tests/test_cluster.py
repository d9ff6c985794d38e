"""run --ray on a Ray cluster of several nodes on this machine (127.0.0.1 only, token authentication), with
the fake engine: the same reports as a local run, and actors, nodes and the driver lost mid-run."""

from __future__ import annotations

import contextlib
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
from edgeeval.run.cluster import SEND_EVERY_S
from edgeeval.run.store import load_records

from cli_support import FAKE_ENGINE_HOOKS_SITECUSTOMIZE, ROOT, run_cli
from conftest import make_project

N_SAMPLE = 36
MODELS = ("general-small", "bio-small")
GATE_AFTER = 4
"""While a test holds the gate closed, every fake engine of the cluster's actors gives this many answers and
holds the next (tests/cli_support.py's hooks), so a test acts on a run that is certainly mid-chunk."""
CLOSED_DELAY_S = SEND_EVERY_S + 0.05
"""Seconds per fake answer while the gate is closed: more than SEND_EVERY_S, so an actor sends each answer on
its own and the answers before the held one reach the driver (it writes them) while the actor waits. Once the
gate opens the answers come at full speed."""

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
    site = Path(private) / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_ENGINE_HOOKS_SITECUSTOMIZE)
    gate = Path(private) / "gate"
    gate.touch()  # open: tests close it while they need the actors held (`held`)
    os.environ.update({"RAY_TMPDIR": private, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(ROOT), os.environ.get("PYTHONPATH")])),
                       "EDGEEVAL_TEST_GATE": str(gate), "EDGEEVAL_TEST_GATE_AFTER": str(GATE_AFTER),
                       "EDGEEVAL_TEST_GATE_CLOSED_DELAY_S": str(CLOSED_DELAY_S)})
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


def n_records(out: Path, model: str) -> int:
    path = out / "records" / model / "case_challenges.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def wait_for_records(out: Path, n: int, timeout: float = 300) -> None:
    """Until every model has `n` records: a wait for an event (the actors hold after GATE_AFTER answers), the
    timeout only a guard against a hang."""
    deadline = time.monotonic() + timeout
    while any(n_records(out, model) < n for model in MODELS):
        if time.monotonic() > deadline:
            raise AssertionError(f"{[n_records(out, m) for m in MODELS]} records after {timeout} s, waiting for {n}")
        time.sleep(0.02)


@contextlib.contextmanager
def held(out: Path, workers: int, action=lambda: None):
    """A run in the block whose actors are held mid-chunk: the gate is closed, every actor answers GATE_AFTER
    units and waits; once all `workers` actors per model have (GATE_AFTER x workers records each), `action()`
    runs and the gate opens. Yields a list that holds whatever went wrong in between."""
    gate = Path(os.environ["EDGEEVAL_TEST_GATE"])
    problems: list[BaseException] = []

    def release():
        try:
            wait_for_records(out, GATE_AFTER * workers)
            action()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            problems.append(exc)
        finally:
            gate.touch()

    gate.unlink()
    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
        gate.touch()
    if problems:
        raise problems[0]


def test_ray_run_writes_the_reports_of_a_local_run(cluster, project, tmp_path):
    local, spread = tmp_path / "local", tmp_path / "ray"
    assert run_cli(project, *run_args(project, local)) == 0
    # Held until both actors of each model answer: the work cannot be done before the second one starts.
    with held(spread, workers=2):
        assert run_cli(project, *run_args(project, spread, "--ray", cluster.address, "--workers", "2",
                                          "--chunk", "5")) == 0
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


def test_an_actor_killed_mid_run_costs_at_most_its_chunk(cluster, project, tmp_path):
    out = tmp_path / "run"
    killed, earlier = [], set(actor_pids(cluster))  # the actors of earlier runs may still be on their way out

    def kill_one():
        pids = [pid for pid in actor_pids(cluster) if pid not in earlier]
        assert len(pids) == 4, pids  # two per model, each holding a chunk
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    with held(out, workers=2, action=kill_one):
        assert run_cli(project, *run_args(project, out, "--ray", cluster.address, "--workers", "2")) == 0
    assert killed
    assert_complete(out)
    invocation = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    assert len(invocation["node_problems"]) == 1 and "lost" in invocation["node_problems"][0]
    # The killed actor had answered GATE_AFTER units of its chunk of 8 (the default): the rest went back.
    assert invocation["units_given_back"] == 8 - GATE_AFTER


def test_a_node_removed_mid_run(cluster, project, tmp_path):
    out = tmp_path / "run"
    extra = cluster.add_node(num_cpus=4, object_store_memory=100 * 2**20)
    with held(out, workers=3, action=lambda: cluster.remove_node(extra, allow_graceful=False)):
        assert run_cli(project, *run_args(project, out, "--ray", cluster.address, "--workers", "3")) == 0
    assert_complete(out)
    invocation = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    # The node's actors (SPREAD puts some on every node) each held a chunk of 8 with GATE_AFTER answered; an
    # actor may answer a few more after its raylet is gone, before Ray calls it lost. Only the rest is redone.
    # (A replacement actor placed on the node before Ray saw it die is named too, as one that did not start.)
    lost = [problem for problem in invocation["node_problems"] if " lost (" in problem]
    assert lost and all(" lost (" in p or "did not start" in p for p in invocation["node_problems"])
    assert invocation["units_given_back"] <= (8 - GATE_AFTER) * len(lost)


def test_a_node_without_the_model_is_named_and_the_rest_finish(cluster, project, tmp_path, monkeypatch, capsys):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from edgeeval.config.models import load_models_config
    from edgeeval.engine import EngineSettings
    from edgeeval.run.cluster import ModelWorker, NodeUnusable, ray_session
    from edgeeval.run.planning import prepare_model

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

    def kill_driver():
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    with held(out, workers=1, action=kill_driver):
        proc = subprocess.Popen(cmd, cwd=project, env=os.environ,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The driver died with its actor holding: what it had written stays, and a local run finishes the rest.
    assert [len(load_records(out, model, "case_challenges")) for model in MODELS] == [GATE_AFTER] * 2
    assert run_cli(project, *run_args(project, out)) == 0
    assert_complete(out)


def test_a_local_run_is_resumed_on_the_cluster(cluster, project, tmp_path):
    """The other way round: what a local run did stays, the cluster does only the rest, and the reports equal
    those of one uninterrupted local run."""
    out, whole = tmp_path / "run", tmp_path / "whole"
    assert run_cli(project, *run_args(project, out, "--limit", "10")) == 0
    assert run_cli(project, *run_args(project, out, "--ray", cluster.address, "--workers", "2")) == 0
    assert_complete(out)
    invocation = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    assert (invocation["skipped_done"], invocation["generated"]) == (2 * 10, 2 * (N_SAMPLE - 10))
    assert run_cli(project, *run_args(project, whole)) == 0
    for name in ("results.csv", "comparison.csv"):
        assert (out / name).read_bytes() == (whole / name).read_bytes()


def test_joining_a_cluster_without_token_authentication_is_refused(project, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert run_cli(project, *run_args(project, tmp_path / "run", "--ray", "10.0.0.7:6379")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RAY_AUTH_MODE=token" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_a_token_file_other_users_can_read_is_refused(project, tmp_path, monkeypatch, capsys):
    """`ray get-auth-token --generate` writes ~/.ray/auth_token with the umask's mode (0644 here): anyone on
    the driver's machine could then run code on the cluster. Refused in one line that says how to fix it."""
    token = tmp_path / "home" / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text(secrets.token_hex(32))
    token.chmod(0o644)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert run_cli(project, *run_args(project, tmp_path / "run", "--ray", "10.0.0.7:6379")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"chmod 600 {token}" in err[0] and "mode 644" in err[0], err
    assert not (tmp_path / "run").exists()
    # At 0600 it passes; a RAY_AUTH_TOKEN_PATH file is held to the same rule.
    token.chmod(0o600)
    from edgeeval.run.cluster import require_token_auth

    require_token_auth()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token.with_name("other")))
    token.with_name("other").write_text("x")
    token.with_name("other").chmod(0o640)
    with pytest.raises(Exception, match="chmod 600"):
        require_token_auth()


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
    # The manifest lists the nodes with what answered there: llama.cpp, its system info, the threads.
    import llama_cpp

    here = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    nodes = json.loads((tmp_path / "ray" / "manifest.json").read_text())["nodes"]
    assert nodes and all(n["backend"] == "llama" and n["system_info"] == here and n["n_threads"] == 1
                         for n in nodes.values()), nodes
