"""Runs a model in a child process, so that a native crash costs one unit of work, not the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from multiprocessing.connection import Connection
from pathlib import Path

from edgeeval.engine import EngineSettings, Generation
from edgeeval.errors import ModelFileError

# Test hook: a worker whose prompt contains this marker crashes the way native code does.
FAULT_ENV = "EDGEEVAL_FAULT_INJECT"


class WorkerCrashed(Exception):
    """The worker process died (signal or exit) while doing a unit of work."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (signal {-code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _maybe_inject_fault(prompt: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    kind, _, marker = spec.partition(":")
    if marker and marker in prompt:
        if kind == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif kind == "abort":
            os.abort()
        elif kind == "exit":
            os._exit(3)


def _worker_main(conn, model_path: str, settings: dict) -> None:
    """The child: load the model once, then answer requests until told to stop."""
    engine_settings = EngineSettings(**settings)
    try:
        if engine_settings.backend == "fake":
            from edgeeval.engine.fake import FakeModel

            model = FakeModel(model_path, engine_settings, delay_s=engine_settings.fake_delay_s)
        else:
            from edgeeval.engine.llama import LlamaModel  # only the child imports llama_cpp

            model = LlamaModel(model_path, engine_settings)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send({"error": str(exc)})
        return
    conn.send({"info": model.info()})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request["op"] == "close":
            break
        _maybe_inject_fault(request["prompt"])
        try:
            result = model.generate(request["prompt"], request["max_tokens"], request["stop"])
            conn.send({"generation": asdict(result)})
        except Exception as exc:  # noqa: BLE001
            conn.send({"generation": asdict(Generation(text=None, finish_reason="error", error=f"engine: {exc}"))})
    model.close()


class WorkerEngine:
    """The parent's handle on a model loaded in a worker process (restarted after a crash)."""

    def __init__(self, model_path: Path, settings: EngineSettings):
        self.model_path = str(model_path)
        self.settings = settings.resolved()
        self.restarts = 0
        self.crashes: list[str] = []
        self._proc = None
        self._conn = None
        self._info: dict = {}
        self._start()

    def _start(self) -> None:
        # A fresh interpreter (not fork: llama.cpp's threads; not multiprocessing's spawn, which
        # re-imports the caller's __main__) connected by a socket pair.
        parent, child = socket.socketpair()
        cmd = [sys.executable, "-m", "edgeeval.engine.worker", str(child.fileno()), self.model_path,
               json.dumps(asdict(self.settings))]
        proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        child.close()
        self._proc, self._conn = proc, Connection(parent.detach())
        reply = self._receive(timeout=600.0, what="loading the model")
        if "error" in reply:
            self._stop()
            raise ModelFileError(f"{self.model_path}: {reply['error']}")
        self._info = reply["info"]

    def _receive(self, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while not self._conn.poll(0.1):
            if self._proc.poll() is not None:
                raise WorkerCrashed(f"worker {describe_exit(self._proc.returncode)} while {what}")
            if time.monotonic() > deadline:
                self._stop()
                raise WorkerCrashed(f"worker timed out after {timeout:.0f} s while {what}")
        try:
            return self._conn.recv()
        except (EOFError, ConnectionError):
            _wait(self._proc, 5)
            raise WorkerCrashed(f"worker {describe_exit(self._proc.returncode)} while {what}") from None

    def info(self) -> dict:
        return {**self._info, "restarts": self.restarts, "crashes": list(self.crashes)}

    def generate(self, prompt: str, max_tokens: int, stop: list[str]) -> Generation:
        """One answer; a native crash is retried once (in safe mode if repacking was on), then recorded."""
        try:
            return self._generate_once(prompt, max_tokens, stop)
        except WorkerCrashed as first:
            self._note_crash(str(first))
            if self.settings.use_extra_bufts:
                # The known Intel-AMX crash comes from weight repacking: go on without it.
                self.settings = replace(self.settings, use_extra_bufts=False)
            self._restart()
            try:
                return self._generate_once(prompt, max_tokens, stop)
            except WorkerCrashed as second:
                self._note_crash(str(second))
                self._restart()
                return Generation(text=None, finish_reason="error", error=f"native crash: {second}")

    def _generate_once(self, prompt: str, max_tokens: int, stop: list[str]) -> Generation:
        self._conn.send({"op": "generate", "prompt": prompt, "max_tokens": max_tokens, "stop": list(stop)})
        reply = self._receive(self.settings.unit_timeout_s, "generating")
        return Generation(**reply["generation"])

    def _note_crash(self, message: str) -> None:
        self.crashes.append(message)

    def _restart(self) -> None:
        self._stop()
        self.restarts += 1
        self._start()

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            _wait(self._proc, 10)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        if self._conn is not None and self._proc is not None and self._proc.poll() is None:
            try:
                self._conn.send({"op": "close"})
                _wait(self._proc, 10)
            except (BrokenPipeError, OSError):
                pass
        self._stop()


def _wait(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])), sys.argv[2], json.loads(sys.argv[3]))
