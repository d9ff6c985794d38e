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
from typing import TYPE_CHECKING, Any, Callable, Union

from edgeeval.config.gguf import read_gguf_metadata
from edgeeval.engine import EngineError, EngineSettings, Generation, OptionScore
from edgeeval.engine.memory import check_context_fits
from edgeeval.errors import ModelFileError
from edgeeval.types import ErrorKind

if TYPE_CHECKING:
    from edgeeval.engine.fake import FakeModel
    from edgeeval.engine.llama import LlamaModel

    Model = Union[FakeModel, LlamaModel]

# Test hook: a worker whose prompt (or, while loading, model path) contains this marker crashes the
# way native code does.
FAULT_ENV = "EDGEEVAL_FAULT_INJECT"


class WorkerCrashed(Exception):
    """The worker process died (signal or exit) while doing a unit of work."""


class WorkerTimedOut(WorkerCrashed):
    """The worker took longer than allowed; it has been killed."""


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


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this worker when the process that started it dies, even by SIGKILL, so
    an orphaned llama.cpp does not go on with a long unit, keeping the cores busy (a second llama.cpp
    on the same cores slows down by orders of magnitude)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _worker_main(conn: Connection[Any, Any], model_path: str, settings: dict[str, Any]) -> None:
    """The child: load the model once, then answer requests until told to stop."""
    model: Model
    engine_settings = EngineSettings(**settings)
    _maybe_inject_fault(model_path)
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
        if request["op"] in _OPS:
            # The token counters ride along, so the parent's info() shows how much prefix reuse saved.
            conn.send({**_OPS[request["op"]](model, request), "tokens": dict(model.counters)})
            continue
        _maybe_inject_fault(request["prompt"])
        try:
            result = model.generate(request["prompt"], request["max_tokens"], request["stop"],
                                    speculative=request.get("speculative"))
        except Exception as exc:  # noqa: BLE001
            failure = _as_engine_error(exc)
            result = Generation.failed(failure.kind, failure.detail)
        conn.send({"generation": result.to_wire(), "tokens": dict(model.counters)})
    model.close()


# The replies to a unit of work: a Generation or an OptionScore as its `to_wire`,
# and a failure as {"error": {"kind": ..., "detail": ...}}, made by `_error_reply` and read back by
# `_reply_error`. (The load handshake answers {"info": ...} or {"error": message}.)


def _as_engine_error(exc: Exception) -> EngineError:
    """EngineError carries its kind; any other exception is an engine fault."""
    return exc if isinstance(exc, EngineError) else EngineError(ErrorKind.ENGINE, str(exc))


def _error_reply(error: EngineError) -> dict[str, Any]:
    return {"error": {"kind": error.kind.value, "detail": error.detail}}


def _reply_error(reply: dict[str, Any]) -> EngineError:
    return EngineError(ErrorKind(reply["error"]["kind"]), reply["error"]["detail"])


def _answered(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The op's reply, or the error it raised as an error reply (the worker goes on to the next request)."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001
        return _error_reply(_as_engine_error(exc))


def _op_generate_many(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    _maybe_inject_fault("\0".join(request["prompts"]))
    return _answered(lambda: {"generations": [result.to_wire() for result in model.generate_many(
        request["prompts"], request["max_tokens"], request["stop"], n_parallel=request.get("n_parallel"),
        speculative=request.get("speculative"))]})


def _op_loglikelihood_many(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    _maybe_inject_fault("\0".join(context + "\0" + "\0".join(options) for context, options in request["items"]))
    return _answered(lambda: {"scores": [[score.to_wire() for score in item] for item in model.loglikelihood_many(
        [(c, list(o)) for c, o in request["items"]])]})


def _op_letter_logprobs(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    _maybe_inject_fault(request["prompt"])
    return _answered(lambda: {"logprobs": model.letter_logprobs(request["prompt"], request["letters"])})


def _op_embed(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    _maybe_inject_fault("\0".join(request["texts"]))
    return _answered(lambda: {"vectors": model.embed(request["texts"])})


def _op_token_embeddings(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    _maybe_inject_fault("\0".join(request["texts"]))
    return _answered(lambda: {"texts": model.token_embeddings(request["texts"])})


def _op_count_tokens(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    return _answered(lambda: {"counts": model.count_tokens(request["texts"])})


def _op_token_slice(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    return _answered(lambda: {"text": model.token_slice(request["text"], request["start"], request["end"])})


def _op_calibrate(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    return _answered(lambda: {"rates": model.calibrate(request["n_prompt"], request["n_gen"])})


# Operations besides `generate`: each takes the request and returns the reply to send.
_OPS = {
    "calibrate": _op_calibrate,
    "count_tokens": _op_count_tokens,
    "token_embeddings": _op_token_embeddings,
    "token_slice": _op_token_slice,
    "embed": _op_embed,
    "generate_many": _op_generate_many,
    "loglikelihood_many": _op_loglikelihood_many,
    "letter_logprobs": _op_letter_logprobs,
}


class WorkerEngine:
    """The parent's handle on a model loaded in a worker process (restarted after a crash)."""

    def __init__(self, model_path: Path, settings: EngineSettings):
        self.model_path = str(model_path)
        self.settings = settings.resolved()
        self.restarts = 0
        self.crashes: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection[Any, Any] | None = None
        self._info: dict[str, Any] = {}
        # A context too large for this machine is refused here, before llama.cpp allocates it.
        if not self.settings.vocab_only:
            check_context_fits(self.model_path, read_gguf_metadata(self.model_path).metadata, self.settings.n_ctx)
        self._start()

    def _start(self) -> None:
        # A fresh interpreter (not fork: llama.cpp's threads; not multiprocessing's spawn, which
        # re-imports the caller's __main__) connected by a socket pair.
        parent, child = socket.socketpair()
        cmd = [sys.executable, "-m", "edgeeval.engine.worker", str(child.fileno()), self.model_path,
               json.dumps(asdict(self.settings)), str(os.getpid())]
        proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        child.close()
        self._proc, self._conn = proc, Connection(parent.detach())
        try:
            reply = self._receive(timeout=600.0, what="loading the model")
        except WorkerCrashed as exc:
            self._stop()
            # Killed while allocating is mostly the out-of-memory killer: say which setting to change.
            raise ModelFileError(f"{self.model_path}: engine {exc}; if the machine ran out of memory, lower "
                                 f"n_ctx for this model in models.toml (now {self.settings.n_ctx})") from None
        if "error" in reply:
            self._stop()
            raise ModelFileError(f"{self.model_path}: {reply['error']}")
        self._info = reply["info"]

    def _receive(self, timeout: float, what: str) -> dict[str, Any]:
        assert self._proc is not None and self._conn is not None, "worker not started"
        deadline = time.monotonic() + timeout
        while not self._conn.poll(0.1):
            if self._proc.poll() is not None:
                raise WorkerCrashed(f"worker {describe_exit(self._proc.returncode)} while {what}")
            if time.monotonic() > deadline:
                self._stop()
                raise WorkerTimedOut(f"worker timed out after {timeout:.0f} s while {what}")
        try:
            reply: dict[str, Any] = self._conn.recv()
            return reply
        except (EOFError, ConnectionError):
            _wait(self._proc, 5)
            raise WorkerCrashed(f"worker {describe_exit(self._proc.returncode)} while {what}") from None

    def info(self) -> dict[str, Any]:
        return {**self._info, "restarts": self.restarts, "crashes": list(self.crashes)}

    def generate(self, prompt: str, max_tokens: int, stop: list[str], speculative: str | None = None) -> Generation:
        """One answer; a native crash is retried once (in safe mode if repacking was on), then recorded."""
        request = {"op": "generate", "prompt": prompt, "max_tokens": max_tokens, "stop": list(stop),
                   "speculative": speculative}
        reply = self._request_with_retry(request, "generating")
        if "generation" in reply:
            return Generation.from_wire(reply["generation"])
        failure = _reply_error(reply)
        return Generation.failed(failure.kind, failure.detail)

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str],
                      n_parallel: int | None = None, speculative: str | None = None) -> list[Generation]:
        """Greedy answers decoded together; a crash (after one retry) or engine failure makes every
        answer of the call an error."""
        request = {"op": "generate_many", "prompts": list(prompts), "max_tokens": max_tokens,
                   "stop": list(stop), "n_parallel": n_parallel, "speculative": speculative}
        reply = self._request_with_retry(request, "generating")
        if "generations" in reply:
            return [Generation.from_wire(g) for g in reply["generations"]]
        failure = _reply_error(reply)
        return [Generation.failed(failure.kind, failure.detail) for _ in prompts]

    def loglikelihood(self, context: str, continuations: list[str]) -> list[OptionScore]:
        return self.loglikelihood_many([(context, continuations)])[0]

    def loglikelihood_many(self, items: list[tuple[str, list[str]]]) -> list[list[OptionScore]]:
        """Scores of every option of every item; a crash (after one retry) or engine failure
        makes every option an error score."""
        request = {"op": "loglikelihood_many", "items": [(c, list(o)) for c, o in items]}
        reply = self._request_with_retry(request, "scoring")
        if "scores" in reply:
            return [[OptionScore.from_wire(score) for score in item] for item in reply["scores"]]
        failure = _reply_error(reply)
        return [[OptionScore.failed(failure.kind, failure.detail) for _ in options] for _, options in items]

    def letter_logprobs(self, prompt: str, letters: list[str]) -> dict[str, float]:
        """Log-probability of each letter as the next token; raises EngineError when there is none."""
        reply = self._request_with_retry({"op": "letter_logprobs", "prompt": prompt, "letters": list(letters)},
                                         "scoring")
        if "error" in reply:
            raise _reply_error(reply)
        logprobs: dict[str, float] = reply["logprobs"]
        return logprobs

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit-length embeddings of `texts` (retrieval); raises EngineError when the model cannot give them."""
        reply = self._request_with_retry({"op": "embed", "texts": list(texts)}, "embedding")
        if "error" in reply:
            raise _reply_error(reply)
        vectors: list[list[float]] = reply["vectors"]
        return vectors

    def token_embeddings(self, texts: list[str]) -> list[dict[str, Any]]:
        """Each text's tokens and their vectors of the last layer (BERTScore's encoder); raises EngineError."""
        reply = self._request_with_retry({"op": "token_embeddings", "texts": list(texts)}, "embedding")
        if "error" in reply:
            raise _reply_error(reply)
        embedded: list[dict[str, Any]] = reply["texts"]
        return embedded

    def calibrate(self, n_prompt: int, n_gen: int) -> dict[str, float]:
        """Prompt and generation tokens per second as this model is loaded (--repack auto); raises EngineError."""
        reply = self._request_with_retry({"op": "calibrate", "n_prompt": n_prompt, "n_gen": n_gen}, "calibrating")
        if "error" in reply:
            raise _reply_error(reply)
        rates: dict[str, float] = reply["rates"]
        return rates

    def count_tokens(self, texts: list[str]) -> list[int]:
        """The model's own token counts (the planner's tokenizer); raises EngineError."""
        reply = self._request_with_retry({"op": "count_tokens", "texts": list(texts)}, "tokenizing")
        if "error" in reply:
            raise _reply_error(reply)
        counts: list[int] = reply["counts"]
        return counts

    def token_slice(self, text: str, start: int | None, end: int | None) -> str:
        reply = self._request_with_retry({"op": "token_slice", "text": text, "start": start, "end": end},
                                         "tokenizing")
        if "error" in reply:
            raise _reply_error(reply)
        sliced: str = reply["text"]
        return sliced

    def _request_with_retry(self, request: dict[str, Any], what: str) -> dict[str, Any]:
        """One request, retried once on a fresh worker after a native crash (in safe mode if
        repacking was on: the known Intel-AMX crash comes from it), then answered with an error."""
        try:
            return self._request_once(request, what)
        except WorkerCrashed as first:
            self._note_crash(str(first))
            if self.settings.use_extra_bufts:
                self.settings = replace(self.settings, use_extra_bufts=False)
            self._restart()
            try:
                return self._request_once(request, what)
            except WorkerCrashed as second:
                self._note_crash(str(second))
                self._restart()
                kind = ErrorKind.TIMEOUT if isinstance(second, WorkerTimedOut) else ErrorKind.NATIVE_CRASH
                return _error_reply(EngineError(kind, str(second)))

    def _request_once(self, request: dict[str, Any], what: str) -> dict[str, Any]:
        assert self._conn is not None, "worker not started"
        self._conn.send(request)
        reply = self._receive(self.settings.unit_timeout_s, what)
        if "tokens" in reply:
            self._info["tokens"] = reply["tokens"]  # since the worker (re)started
        return reply

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


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[4]))
    _worker_main(Connection(int(sys.argv[1])), sys.argv[2], json.loads(sys.argv[3]))
