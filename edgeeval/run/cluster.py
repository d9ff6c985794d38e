"""Ray: one run spread over the machines of a cluster. The driver plans and alone appends records; actors
answer chunks of units, each with one model loaded once on its node.

Only the driver writes the run directory, so the store, its resume key and the report are those of a
local run, and a run moves between local, sharded and Ray execution and resumes. A chunk whose actor or
node is lost goes back to the queue, less the records that already came back, so nothing is recorded
twice and at most a chunk is redone. Security (see SECURITY.md): a local instance listens on 127.0.0.1
only, with a fresh token, no dashboard and owner-only temporary and spill directories; a cluster is
joined only with Ray's token authentication on.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

import edgeeval
from edgeeval.config.model_files import resolve_model_path
from edgeeval.config.models import MODELS_DIR_ENV, Project
from edgeeval.config.sha256_cache import cached_sha256
from edgeeval.engine import EngineSettings
from edgeeval.engine.machine import default_threads
from edgeeval.errors import ConfigError, EdgeevalError
from edgeeval.run.planning import PreparedModel, PreparedTask, Unit
from edgeeval.run.store import Record, RunStore

if TYPE_CHECKING:
    from edgeeval.engine.worker import WorkerEngine

AUTH_HINT = ("--ray ADDRESS joins a cluster only with Ray token authentication (anyone who can reach a cluster "
             "without it can run code on it): start every node and this command with RAY_AUTH_MODE=token and "
             "the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token (Ray >= 2.52; docs/scale-out.md)")
MAX_REPLACEMENTS = 2
"""New actors a worker slot may start after losing one, before it gives up (the others carry on)."""
READY_TIMEOUT_S = 600.0
"""How long an actor may take to be placed and load its model."""
SEND_EVERY_S = 0.2
"""An actor sends what it has done at least this often: every answer of a real model (seconds each) on its
own, quick ones together, as each message costs the driver about a millisecond."""


def require_token_auth() -> None:
    """Token authentication is on, and the token file Ray will read (when the token is not in the environment)
    is not readable by other users of this machine, who could otherwise run code on the cluster with it."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise ConfigError(AUTH_HINT)
    if os.environ.get("RAY_AUTH_TOKEN") or os.name == "nt":
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"{path} (the Ray cluster's token) can be read by other users of this machine "
                              f"(mode {mode & 0o777:o}), who could run code on the cluster with it: chmod 600 {path}")


@contextlib.contextmanager
def ray_session(address: str | None, object_store_bytes: int = 512 * 2**20):
    """Connected to Ray for the block: a private local instance (address None) or a running cluster,
    joined only with token authentication. Ray's environment settings are undone afterwards."""
    saved = dict(os.environ)
    private = None
    try:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        if address is None:
            private = tempfile.mkdtemp(prefix="edgeeval-ray-")  # 0700: prompts may land in Ray's files
            os.environ.update({
                "RAY_TMPDIR": private,
                # Every address Ray picks is then the loopback one: nothing listens on the network.
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                # Other users of this machine can reach 127.0.0.1 too; a fresh token keeps them out.
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            })
        else:
            require_token_auth()
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'edgeeval[ray]'") from None
        if address is None:
            assert private is not None  # made above for a private instance
            ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=object_store_bytes,
                     object_spilling_directory=os.path.join(private, "spill"))
        else:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EdgeevalError(f"cannot join the Ray cluster at {address}: {exc}") from None
        yield ray
    finally:
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def node_model_path(project: Project, name: str) -> Path:
    """The model's file on this node: the driver's layout, under this node's $EDGEEVAL_MODELS_DIR if set."""
    here = os.environ.get(MODELS_DIR_ENV)
    if here:
        project = project.model_copy(update={"models_dir": Path(here).expanduser()})
    return resolve_model_path(project, name)


def node_name() -> str:
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


class NodeUnusable(EdgeevalError):
    """This node cannot serve the model (missing or different file, another edgeeval version)."""


class ModelWorker:
    """A Ray actor: one model on one node, loaded once by `start`, answering chunks with `work`; its
    engine, and so llama.cpp's prefix cache, lives from chunk to chunk. A native crash inside is the
    engine worker's business, as on one machine (retried once in safe mode, then an error record)."""

    def __init__(self, project: Project, model: PreparedModel, settings: EngineSettings, parallel: int,
                 version: str):
        self.project, self.model, self.settings, self.parallel, self.version = project, model, settings, parallel, version
        self.engine: WorkerEngine | None = None
        self.node = node_name()

    def start(self) -> dict:
        from edgeeval.engine.machine import machine_info
        from edgeeval.engine.worker import WorkerEngine

        try:
            if edgeeval.__version__ != self.version:
                raise NodeUnusable(f"edgeeval {edgeeval.__version__} here, {self.version} on the driver")
            path = node_model_path(self.project, self.model.name)
            sha = cached_sha256(path)  # remembered on the node's disk: a 40 GB file is hashed once
            if sha != self.model.sha256:
                raise NodeUnusable(f"{path} is another file (sha256 {sha[:16]}…, the run's is {self.model.sha256[:16]}…)")
            self.engine = WorkerEngine(path, replace(self.settings, n_ctx=self.model.n_ctx))
        except EdgeevalError as exc:
            raise NodeUnusable(f"node {self.node}: model '{self.model.name}': {exc}") from None
        info = self.engine.info()
        return {"node": self.node, "pid": os.getpid(), "machine": machine_info(),
                "system_info": info.get("system_info"), "backend": info.get("backend"),
                "n_threads": self.settings.n_threads}

    def work(self, task: PreparedTask, units: list[Unit]):
        """The records of a chunk of one task's units as they are done, in lists: each answer sent once
        SEND_EVERY_S has passed since the last sending, and whatever is left at the end."""
        from edgeeval.run.answering import answer, engine_calls, speculative_for

        assert self.engine is not None, "start() first"
        done, sent = [], time.perf_counter()
        for sub_task, sub_units in engine_calls([(task, u) for u in units], self.parallel):
            for record in answer(self.engine, self.model, sub_task, sub_units, self.parallel,
                                 speculative_for(sub_task, self.settings)):
                done.append(record.model_copy(update={"node": self.node}))
                if time.perf_counter() - sent >= SEND_EVERY_S:
                    yield done
                    done, sent = [], time.perf_counter()
        if done:
            yield done

    def info(self) -> dict:
        return {**self.engine.info(), "node": self.node} if self.engine else {"node": self.node}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class ChunkQueue:
    """A model's chunks of units. A chunk taken is out until it is done or given back (less what came
    back); `take` waits while chunks are out, as one may come back, and returns None when all are done."""

    def __init__(self, chunks):
        self._items = deque(chunks)
        self._out = 0
        self._cond = threading.Condition()

    def take(self):
        with self._cond:
            while not self._items and self._out:
                self._cond.wait(0.5)
            if not self._items:
                return None
            self._out += 1
            return self._items.popleft()

    def done(self) -> None:
        with self._cond:
            self._out -= 1
            self._cond.notify_all()

    def give_back(self, chunk) -> None:
        with self._cond:
            if chunk[1]:
                self._items.appendleft(chunk)
            self._out -= 1
            self._cond.notify_all()

    def finished(self) -> bool:
        with self._cond:
            return not self._items and not self._out

    def left(self) -> int:
        with self._cond:
            return sum(len(units) for _, units in self._items)


def chunked(pending: list[tuple[PreparedTask, Unit]], size: int) -> list[tuple[PreparedTask, list[Unit]]]:
    """Consecutive units of one task, at most `size` to a chunk."""
    chunks: list[tuple[PreparedTask, list[Unit]]] = []
    for task, unit in pending:
        if chunks and chunks[-1][0] is task and len(chunks[-1][1]) < size:
            chunks[-1][1].append(unit)
        else:
            chunks.append((task, [unit]))
    return chunks


class RayExecutor:
    """Answers a run's pending units on Ray actors (runner.Executor)."""

    def __init__(self, project: Project, address: str | None, workers: int | None = None, chunk: int = 8,
                 worker_cpus: float | None = None, quiet: bool = False):
        if address is not None:
            require_token_auth()  # refuse before any planning, let alone a connection
        self.project, self.address, self.workers, self.chunk = project, address, workers, chunk
        self.worker_cpus, self.quiet = worker_cpus, quiet
        self.nodes: dict[str, dict] = {}
        self.invocation: dict = {}
        self.all_ready_at: float | None = None
        """perf_counter() when the last actor had loaded its model (benchmarks: start-up vs steady state)."""

    def __call__(self, store: RunStore, work, settings: EngineSettings, summary, progress: bool,
                 parallel: int | str) -> dict[str, dict]:
        if not work:
            return {}
        with ray_session(self.address) as ray:
            return self._run(ray, store, work, settings, summary, progress, parallel)

    def _run(self, ray, store, work, settings, summary, progress, parallel) -> dict[str, dict]:
        from edgeeval.run.answering import parallel_for

        threads = settings.n_threads or default_threads()
        settings = replace(settings, n_threads=threads)
        cpus = self.worker_cpus if self.worker_cpus is not None else float(threads)
        per_model = self.workers or max(1, int(ray.available_resources().get("CPU", 0) // max(cpus, 1e-9) // len(work)))
        remote = ray.remote(ModelWorker)
        events: queue.Queue = queue.Queue()
        queues, slots = {}, []
        for w in work:
            # What records need: the chat template and the retrieval index (passages, vectors) stay with the
            # driver, which put the passages into the prompts already.
            slim = replace(w.model, chat=None, retrieval=None)
            tasks = {id(t): ray.put(replace(t, examples=[], prompt=None, shots=())) for t, _ in w.pending}
            queues[w.model.name] = ChunkQueue(chunked(w.pending, self.chunk))

            # --parallel auto is decided per model file, as on one machine.
            sequences = parallel_for(w.model, settings) if parallel == "auto" else parallel

            def make(model=slim, sequences=sequences):
                return remote.options(num_cpus=cpus, max_restarts=0, scheduling_strategy="SPREAD").remote(
                    self.project, model, settings, sequences, edgeeval.__version__)

            for _ in range(per_model):
                slots.append(threading.Thread(target=self._drive, daemon=True,
                                              args=(ray, w.model.name, make, queues[w.model.name], tasks, events)))
        for slot in slots:
            slot.start()
        started = time.perf_counter()
        counts = {w.model.name: 0 for w in work}
        infos: dict[str, list] = {w.model.name: [] for w in work}
        problems: list[str] = []
        lost_units = 0
        bar = tqdm(total=sum(len(w.pending) for w in work), desc="cluster", unit="ex", disable=not progress,
                   dynamic_ncols=True)
        running, shown, ready = len(slots), 0.0, 0
        while running:
            batch = [events.get()]
            while len(batch) < 512 and not events.empty():
                batch.append(events.get_nowait())
            records = [record for kind, _, value in batch if kind == "records" for record in value]
            if records:
                store.append_many(records)  # one sync for all that came back together
                for record in records:
                    counts[record.model] += 1
                    summary.errors += record.error is not None
                summary.done += len(records)
                bar.update(len(records))
                if time.perf_counter() - shown > 1.0:
                    shown = time.perf_counter()
                    bar.set_postfix_str(", ".join(f"{m} {n / (shown - started):.2f}/s" for m, n in counts.items()))
            for kind, model, value in batch:
                if kind == "ready":
                    ready += 1
                    if ready == len(slots):
                        self.all_ready_at = time.perf_counter()
                    self.nodes[value["node"]] = {k: value[k] for k in ("machine", "system_info", "backend", "n_threads")}
                elif kind == "info":
                    infos[model].append(value)
                elif kind in ("unusable", "lost"):
                    lost_units += value[1] if kind == "lost" else 0
                    problems.append(value[0])
                    print(f"edgeeval: {'error' if kind == 'unusable' else 'warning'}: {value[0]}", file=sys.stderr)
                elif kind == "failed":
                    raise EdgeevalError(value)
                elif kind == "exit":
                    running -= 1
        bar.close()
        elapsed = time.perf_counter() - started
        self.invocation = {"ray": self.address or "local", "workers_per_model": per_model,
                           "cpus_per_worker": cpus, "chunk": self.chunk, "node_problems": problems,
                           "units_given_back": lost_units,
                           "startup_seconds": round((self.all_ready_at or time.perf_counter()) - started, 2)}
        unfinished = {m: q.left() for m, q in queues.items() if not q.finished()}
        if unfinished:
            listed = ", ".join(f"{m}: {n}" for m, n in unfinished.items())
            raise EdgeevalError(f"no worker left to answer the remaining examples ({listed}); the records so far "
                                "are kept: fix the nodes named above and re-run to resume")
        out = {}
        for w in work:
            rate = round(counts[w.model.name] / elapsed, 3) if elapsed else None
            summary.per_model[w.model.name] = {"examples": counts[w.model.name], "seconds": round(elapsed, 2),
                                               "examples_per_s": rate}
            out[w.model.name] = {"backend": "ray", "workers": infos[w.model.name], **summary.per_model[w.model.name]}
        return out

    def _drive(self, ray, model: str, make, chunks: ChunkQueue, tasks: dict, events: queue.Queue) -> None:
        """One worker slot: start an actor, feed it chunks, and start another if it is lost."""
        try:
            for _ in range(1 + MAX_REPLACEMENTS):
                actor = make()
                info = self._start(ray, actor, chunks, events)
                if info is None:
                    return
                events.put(("ready", model, info))
                if self._feed(ray, actor, info["node"], model, chunks, tasks, events):
                    with contextlib.suppress(Exception):
                        events.put(("info", model, ray.get(actor.info.remote(), timeout=30)))
                        ray.get(actor.close.remote(), timeout=30)
                    ray.kill(actor)
                    return
        except Exception as exc:  # noqa: BLE001 - a bug here must end the run, not hang it
            events.put(("failed", model, f"Ray worker for {model}: {type(exc).__name__}: {exc}"))
        finally:
            events.put(("exit", model, None))

    def _start(self, ray, actor, chunks: ChunkQueue, events: queue.Queue) -> dict | None:
        """The actor's node facts once its model is loaded; None when it cannot serve (said why) or when
        the work was done by the others before it was placed."""
        ref = actor.start.remote()
        deadline = time.perf_counter() + READY_TIMEOUT_S
        while not ray.wait([ref], timeout=0.5)[0]:
            if chunks.finished() or time.perf_counter() > deadline:
                ray.kill(actor)
                return None
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, EdgeevalError) else exc
            events.put(("unusable", None, (f"{cause}; the run goes on with the other nodes", 0)))
        except ray.exceptions.RayError as exc:
            events.put(("unusable", None, (f"a Ray actor did not start: {type(exc).__name__}: {exc}", 0)))
        ray.kill(actor)
        return None

    def _feed(self, ray, actor, node: str, model: str, chunks: ChunkQueue, tasks: dict,
              events: queue.Queue) -> bool:
        """Chunks to the actor until none are left (True) or it is lost (False; its chunk's unanswered
        units go back to the queue)."""
        while (chunk := chunks.take()) is not None:
            task, units = chunk
            left = list(units)
            try:
                for ref in actor.work.options(num_returns="streaming").remote(tasks[id(task)], units):
                    records: list[Record] = ray.get(ref)
                    answered = {r.unit_id for r in records}
                    left = [u for u in left if u.example.unit_id not in answered]
                    events.put(("records", model, records))
            except ray.exceptions.RayTaskError:
                chunks.give_back((task, left))
                raise  # the actor's own code failed: a bug, not a lost machine
            except ray.exceptions.RayError as exc:
                chunks.give_back((task, left))
                message = f"{model} worker on node {node} lost ({type(exc).__name__}); {len(left)} example(s) requeued"
                events.put(("lost", model, (message, len(left))))
                with contextlib.suppress(Exception):
                    ray.kill(actor)
                return False
            chunks.done()
        return True
