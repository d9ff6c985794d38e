"""The run directory: manifest, append-only JSONL records, a lock, owner-only permissions."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from edgeeval.errors import DataError, EdgeevalError
from edgeeval.files import FILE_MODE, private_dir, write_private_text
from edgeeval.types import ErrorKind, Failure, FinishReason


class Record(BaseModel):
    """One model's answer (or error) for one example of one task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    model_sha256: str
    task: str
    task_hash: str
    example_id: str
    repeat: int | None = None
    """Which repetition of its item, from 0 (a task with `repeats`); None for an item asked once."""
    prompt_hash: str
    prompt: str
    gold: str
    options: dict[str, str] | None = None
    """Multiple choice: the options offered ({letter: text}), so scoring needs no data file."""
    rotation: int | None = None
    """Under `--permute`: which cyclic rotation of the item's options was shown (`repeat` is the same number)."""
    option_order: list[str] | None = None
    """Under `--permute`: the original option key (letter or label) shown at each position, in order; maps an
    answer back to the option it names."""
    output: str | None
    """The raw generated text; None when `error` is set."""
    error: str | None = None
    """Why there is no answer (native crash, prompt too long, ...), as 'kind: detail'. Errors are never answers."""
    error_kind: ErrorKind | None = None
    """The kind of `error`, set with it (derived from the message for records written before it was stored)."""
    truncation: dict[str, Any] | None = None
    """Set when the task's context policy cut the prompt to fit the model's window: the rule, the field,
    what was dropped and the token estimate (the prompt itself shows the cut)."""
    finish_reason: FinishReason | None = None
    """'stop', 'length', 'context' or 'error' (generate mode); in loglik mode 'error' or None."""
    mode: Literal["generate", "loglik"] = "generate"
    """'generate': `output` is generated text, parsed when scored. 'loglik': nothing was generated; `scores`
    holds every option's log-probability and the answer is the best one by `normalization`."""
    scores: dict[str, dict[str, Any]] | None = None
    """loglik: per option key (letter or label): logprob (sum), mean_logprob, n_tokens, token_logprobs,
    is_greedy (None when not computed)."""
    normalization: Literal["mean", "sum"] | None = None
    """loglik: which score decided the answer (`output` is that option's key)."""
    n_prompt_tokens: int | None = None
    n_output_tokens: int | None = None
    speculative: dict[str, Any] | None = None
    """Speculative decoding of this answer: method ('lookup' or 'draft'), tokens drafted, tokens accepted."""
    seconds: float = 0.0
    created: str = ""
    retrieval: dict[str, Any] | None = None
    """A retrieval arm's audit (edgeeval.retrieval.augment): `passages` shown ({id, source, score, rank}, best
    first), `text_sha256` of their text, `n_passage_tokens` (estimated), `leaked` (ids of candidate passages
    holding the item's own query text), `excluded`, `trimmed_chars`, `dropped_for_context`."""
    node: str | None = None
    """The machine that answered (host name; with Ray, host/node id); None in records from before it was kept."""

    @model_validator(mode="before")
    @classmethod
    def _kind_of_old_errors(cls, data: Any) -> Any:
        """Records written before `error_kind` existed get it from their message's prefix, once, here."""
        if isinstance(data, dict) and data.get("error") is not None and data.get("error_kind") is None:
            return {**data, "error_kind": ErrorKind.of_message(data["error"])}
        return data

    @model_validator(mode="after")
    def _error_has_a_kind(self) -> "Record":
        if (self.error is None) != (self.error_kind is None):
            raise ValueError("error and error_kind are set together")
        return self

    @property
    def failure(self) -> Failure | None:
        """Why there is no answer, as one value (None for an answer)."""
        return None if self.error is None else Failure.of_message(self.error, self.error_kind)

    @property
    def unit_id(self) -> str:
        """The item, and its repetition when it has one: what tells this unit apart from the others of its task."""
        return self.example_id if self.repeat is None else f"{self.example_id}#{self.repeat}"

    def key(self) -> tuple[str, str, str, str]:
        return (self.model_sha256, self.task_hash, self.unit_id, self.prompt_hash)


def failure_fields(failure: Failure | None) -> dict[str, Any]:
    """A Failure as the two fields a record keeps it in (records have always had `error`, the message)."""
    return {} if failure is None else {"error": failure.message, "error_kind": failure.kind}


class _Entry(BaseModel):
    # Unknown keys are kept, not refused: a manifest is written by edgeeval itself, and a newer version's
    # additions must survive being read and re-written by this one.
    model_config = ConfigDict(extra="allow")


class ModelEntry(_Entry):
    """A model as the run used it: its file, identity and how its prompts were formatted."""

    sha256: str
    """The GGUF file's sha256; records of another file are not this model's."""
    path: str | None = None
    size_bytes: int | None = None
    architecture: str | None = None
    name: str | None = None
    quantization: str | None = None
    context_length: int | None = None
    family: str | None = None
    base: str | None = None
    source: str | None = None
    chat_template: str | None = None
    chat_template_sha256: str | None = None
    system_folded_into_user: bool | None = None
    reference: str | None = None
    """The model's name in the published study's scores (models.toml `reference`)."""


class TaskEntry(_Entry):
    """A task as the run defined it: everything scoring needs, so a run directory is re-scored without the
    task files (kind, labels, metrics), and what shaped its prompts."""

    hash: str
    """The task's identity: records of another definition, template or data file are not this task's."""
    kind: str = "multiple_choice"
    labels: list[str] = []
    metrics: list[str] = []
    rouge_stemmer: bool = False
    mode: Literal["generate", "loglik"] = "generate"
    name: str | None = None
    examples: int | None = None
    """Items (questions); with `repeats`, each is asked that many times."""
    repeats: int | None = None
    permute: str | None = None
    """'cyclic' or 'cyclic:K' when every item was asked under rotations of its options (--permute)."""
    document_order: str | None = None
    """LongHealth: 'question' or 'patient', how the documents' order and distractors were drawn."""
    units: int | None = None
    """Examples asked in all (items times their repetitions or rotations), where that is not examples × repeats."""
    data: str | None = None
    data_sha256: str | None = None
    format: str | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    prompt: str | None = None
    few_shot: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    loglik: dict[str, Any] | None = None
    icd_table: str | None = None
    reply_prefix: str | None = None
    """The cue that started every reply (the parser of some kinds reads it before the generated text)."""
    answer_rule: str | None = None
    """'lenient' or 'clue': which parser `accuracy` reads replies with (None before it was kept: lenient)."""
    published: dict[str, Any] | None = None
    """The task's place in the published study: {task, metrics: {edgeeval metric: published metric}}."""
    parser_version: str | None = None
    """The kind's parser version when the answers were recorded (edgeeval.kinds); None before it was kept."""
    scorer_version: str | None = None


class PairEntry(_Entry):
    baseline: str
    candidate: str


class Manifest(_Entry):
    """manifest.json: versions, machine, settings, and the models, tasks and pairs a run directory holds."""

    edgeeval: str | None = None
    llama_cpp_python: str | None = None
    machine: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    config: str | None = None
    pairs: dict[str, PairEntry] = {}
    tasks: dict[str, TaskEntry] = {}
    models: dict[str, ModelEntry] = {}
    engine: dict[str, dict[str, Any]] = {}
    """Per model: what the engine reported (backend, llama.cpp system info, restarts, crashes, speed)."""
    invocations: list[dict[str, Any]] = []
    """One entry per `edgeeval run` that wrote here: when, how long, how many, with which arguments."""
    scoring: dict[str, Any] = {}
    """Metrics computed with a model of their own after the answers (BERTScore's encoder): which model, how, and
    whether they were computed (scores/ in the run directory holds them)."""
    nodes: dict[str, dict[str, Any]] = {}
    """Per machine that answered (the names records carry in `node`): its CPU and llama.cpp system info."""

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def load_manifest(run_dir: Path) -> Manifest | None:
    """The run directory's manifest, or None when it has none yet; DataError names a broken one."""
    path = run_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise DataError(f"{path}: unreadable manifest ({exc.strerror})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        raise DataError(f"{path}: unreadable manifest ({where}: {err['msg']})") from None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


PART = re.compile(r"[A-Za-z0-9-]+")


class RunStore:
    """A run directory, locked for the lifetime of this object so two runs never interleave.

    With a `part` (a shard's name), several processes write one run directory at once: each appends to
    its own record files (records/<model>/<task>.<part>.jsonl) under its own lock, and the manifest is
    merged under a lock rather than overwritten. A run without a part excludes every part, and the other
    way round."""

    def __init__(self, root: Path, part: str | None = None):
        if part is not None and not PART.fullmatch(part):
            raise ValueError(f"bad part name {part!r}")
        self.root = root
        self.part = part
        try:
            private_dir(root)
            private_dir(root / "records")
        except OSError as exc:
            raise EdgeevalError(f"cannot create run directory {root}: {exc.strerror}") from None
        # A part holds the run directory's lock shared (other parts may run) and its own exclusively.
        self._lock_handle = self._lock(".lock", shared=part is not None)
        try:
            self._part_lock = self._lock(f".lock.{part}", shared=False) if part is not None else None
        except EdgeevalError:
            os.close(self._lock_handle)
            raise
        self._fds: dict[Path, int] = {}

    def _lock(self, name: str, shared: bool) -> int:
        path = self.root / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise EdgeevalError(f"cannot write to run directory {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f"{self.part} " if self.part and not shared else ""
                raise EdgeevalError(
                    f"run directory {self.root} {who}is in use by another edgeeval process; "
                    "wait for it to finish or choose another --out"
                    + ("" if self.part is None else " (shards run together, but not beside an unsharded run "
                       "or the same shard twice)")
                ) from None
            raise EdgeevalError(f"cannot lock run directory {self.root}: {exc.strerror}") from None
        with contextlib.suppress(OSError):  # the pid is for people; a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        return fd

    def records_path(self, model: str, task: str) -> Path:
        name = f"{task}.jsonl" if self.part is None else f"{task}.{self.part}.jsonl"
        return self.root / "records" / model / name

    def load(self, model: str, task: str) -> list[Record]:
        """Every complete record of (model, task) in every part's file, oldest first; a torn last line
        from a crash is cut off this process's own file (another part's may be mid-write)."""
        own = self.records_path(model, task)
        if own.exists():
            read_records(own, repair=True)
        return load_records(self.root, model, task)

    def append(self, record: Record) -> None:
        """Append one record and push it to disk before returning (a kill loses nothing written). If the
        disk refuses (full, read-only), the partial line is cut off again and EdgeevalError says so."""
        self.append_many([record])

    def append_many(self, records: list[Record]) -> None:
        """`append` for records that arrived together (from a cluster): written in order, then pushed to disk
        with one sync per file, as one sync costs milliseconds and many workers answer faster than that."""
        by_path: dict[Path, list[bytes]] = {}
        for record in records:
            by_path.setdefault(self.records_path(record.model, record.task), []).append(
                (record.model_dump_json() + "\n").encode("utf-8"))
        for path, lines in by_path.items():
            self._write_lines(path, b"".join(lines))

    def _write_lines(self, path: Path, data: bytes) -> None:
        start = None
        try:
            fd = self._fds.get(path)
            if fd is None:
                private_dir(path.parent)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
                os.chmod(path, FILE_MODE)
                self._fds[path] = fd
            start = os.lseek(fd, 0, os.SEEK_END)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            if start is not None and fd is not None:  # fd is set once start is
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            raise EdgeevalError(f"cannot write records to {path}: {exc.strerror}; records written so far are kept") from None

    def write_manifest(self, manifest: Manifest | dict[str, Any]) -> None:
        mine = manifest if isinstance(manifest, Manifest) else Manifest.model_validate(manifest)
        if self.part is None:
            return self._write_manifest(mine)
        # Parts write concurrently: what this one knows is merged into what the others wrote, under a lock.
        fd = os.open(self.root / ".lock.manifest", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._write_manifest(merge_manifests(load_manifest(self.root), mine))
        finally:
            os.close(fd)

    def _write_manifest(self, manifest: Manifest) -> None:
        write_private_text(self.root / "manifest.json", json.dumps(manifest.as_json(), indent=2, sort_keys=True) + "\n")

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):  # every record was already written and synced by append()
                os.close(fd)
        self._fds.clear()
        for name in ("_part_lock", "_lock_handle"):
            if getattr(self, name) is not None:
                os.close(getattr(self, name))
                setattr(self, name, None)

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path, repair: bool = False) -> list[Record]:
    """Parse a records file. An unterminated final line (the process died mid-write) is dropped, and
    with `repair` cut from the file; a bad complete line is an error naming file and line."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(Record.model_validate_json(line))
        except ValidationError as exc:
            raise EdgeevalError(f"{path}:{number}: corrupt record ({exc.errors()[0]['msg']})") from None
    if tail.strip() and repair:
        good = sum(len(line) + 1 for line in complete)
        with open(path, "r+b") as handle:
            handle.truncate(good)
    return records


def record_files(root: Path, model: str, task: str) -> list[Path]:
    """The record files of (model, task): the unsharded one first, then each part's, by name."""
    directory = root / "records" / model
    main = directory / f"{task}.jsonl"
    pattern = re.compile(re.escape(task) + r"\.([A-Za-z0-9-]+)\.jsonl")
    parts = sorted(p for p in directory.glob(f"{glob_escape(task)}.*.jsonl") if pattern.fullmatch(p.name)) \
        if directory.is_dir() else []
    return ([main] if main.exists() else []) + parts


def glob_escape(text: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", text)


def load_records(root: Path, model: str, task: str) -> list[Record]:
    """Every complete record of (model, task) across its files, oldest first (stable within a file), so
    "the last record of an example wins" holds however the run was split."""
    records = [r for path in record_files(root, model, task) for r in read_records(path)]
    return sorted(records, key=lambda r: r.created)


def current_records(root: Path, manifest: Manifest, model: str, task: str) -> list[Record]:
    """The records of (model, task) that belong to the run's current model file and task definition (files may
    also hold records of an older one), the last record of a unit winning when it was retried, in item order
    (example id, then repetition): not the order records were written, which shards, Ray workers and retries
    change, so the paired bootstrap draws the same items whichever wrote them."""
    meta, entry = manifest.models[model], manifest.tasks[task]
    latest = {}
    for record in load_records(root, model, task):  # every shard's file, oldest first
        if record.model_sha256 == meta.sha256 and record.task_hash == entry.hash:
            latest[record.example_id, -1 if record.repeat is None else record.repeat] = record
    return [latest[key] for key in sorted(latest)]


def merge_manifests(current: Manifest | None, mine: Manifest) -> Manifest:
    """`mine` written over `current` without losing what other writers added: their models, tasks, pairs,
    engine entries, nodes and invocations stay; this writer's entries replace theirs of the same name."""
    if current is None:
        return mine
    merged = mine.model_copy(deep=True)
    for name in ("pairs", "tasks", "models", "engine", "nodes", "scoring"):
        setattr(merged, name, {**getattr(current, name), **getattr(mine, name)})
    merged.invocations = current.invocations + [i for i in mine.invocations if i not in current.invocations]
    return merged
