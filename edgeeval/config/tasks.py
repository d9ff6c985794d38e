"""Task TOMLs: one clinical task's data, prompt, generation settings and metrics, read into frozen pydantic
models; a task's hash, which changes whenever its definition, template or data does."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgeeval import kinds
from edgeeval.config.reading import Frozen, read_toml, validated
from edgeeval.data.formats import FORMATS, DataSpec


class FewShotSpec(Frozen):
    """Solved examples shown before each question, as earlier user/assistant turns."""

    path: str
    """A small file in the task's data format, relative to the task's root; never the test file."""
    count: int = Field(ge=1, le=16)
    """How many: the file's first `count` examples, in file order (deterministic)."""
    answer: str = "{{ gold }}"
    """Jinja text of the assistant's turn; sees the example's fields and `gold`."""


class ContextSpec(Frozen):
    """What to do with a prompt longer than the model's context window. Never silent: a cut prompt is
    recorded in its record's `truncation`, a prompt that cannot fit is an error record."""

    policy: Literal["skip", "truncate"] = "skip"
    """'skip': send the prompt whole; one the model's tokenizer finds too long is recorded as a
    `prompt_too_long` error. 'truncate': cut by `rule` until the prompt fits."""
    field: str | None = None
    """truncate: the template variable that is cut (the long documents, never the question); every rule but
    keep_right cuts one."""
    rule: Literal["drop_middle", "drop_documents", "fill_documents", "keep_right"] = "drop_middle"
    """By an estimate from characters: 'drop_middle' keeps the head and the tail of a text field, drops its middle;
    'drop_documents' drops the least relevant of a list of documents, then cuts the last kept one's tail.
    By the model's own tokens, as the study did: 'fill_documents' (CLUE's LongHealth) puts the documents in
    rank order as long as the prompt stays within `max_prompt_tokens`, cuts the first that does not fit to the
    tokens left and leaves out the rest; 'keep_right' (CLUE's TGI server) keeps the rightmost tokens of a whole
    prompt longer than the window leaves for it."""
    max_prompt_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    """fill_documents: the prompt's cap in the model's tokens (CLUE's LongHealth: 8,140), never more than the window
    leaves (the context length less max_tokens)."""
    chars_per_token: float = Field(default=3.0, gt=0.5, le=10.0)
    """The estimate of drop_middle and drop_documents: characters per token (lower is more cautious; English prose
    runs 3.5-4.5)."""

    @model_validator(mode="after")
    def _field_for_truncate(self) -> "ContextSpec":
        if self.policy == "truncate" and not self.field and self.rule != "keep_right":
            raise ValueError(f"policy 'truncate' with rule '{self.rule}' needs 'field' (the template variable to cut)")
        if self.max_prompt_tokens is not None and self.rule != "fill_documents":
            raise ValueError("'max_prompt_tokens' applies to rule 'fill_documents' only")
        return self


class LoglikSpec(Frozen):
    """How `--mode loglik` scores a task: the model reads the prompt once and every answer option is
    scored by its log-probability as the assistant's reply; nothing is generated, nothing parsed."""

    scoring: Literal["letter", "full_text"] = "full_text"
    """'letter': the options' letters are the continuations (one pass over the prompt and the letters'
    logits at its end when each letter is one token); 'full_text': each option's text is a continuation
    (label tasks: each label)."""
    normalization: Literal["mean", "sum"] = "mean"
    """Which score picks the answer: 'mean' (per-token mean log-probability, as llama-perplexity) or
    'sum' (total log-probability, lm-eval's `acc`). Records keep both."""
    prompt: str | None = None
    """A user-message template for this mode (relative to the task's root); default: the task's."""
    answer_prefix: str = ""
    """Text of the assistant's reply before the option, e.g. 'The answer is ' when the prompt asks for it."""


class TaskRetrievalSpec(Frozen):
    """How a model with retrieval queries the corpus for this task's examples."""

    query: list[str] = ["question"]
    """The example fields that form the query, joined by blank lines: by default the question alone, never the
    options or the answer."""


class PublishedSpec(Frozen):
    """Which published task this one is, and which of its metrics are which published ones: a report sets the
    published values (benchmarks/clinical/reference/) beside this run's for models that name a `reference`."""

    task: str
    """The task's name in the published scores, e.g. 'MedNLI'."""
    metrics: dict[str, str]
    """edgeeval metric = published metric, e.g. {accuracy = "accuracy"}."""


class TaskSpec(Frozen):
    """One clinical task: its data, prompt, generation settings and metrics."""

    name: str
    description: str = ""
    kind: str
    """How outputs are parsed and scored (edgeeval.kinds): 'multiple_choice' (an option letter), 'label' (one
    word of `labels`), 'summary' (free text vs a reference), 'icd_coding' (ICD-10-CM codes), 'abstention' (the
    right answer is to say the documents do not answer the question)."""
    labels: list[str] = []
    """kind 'label': the allowed answers; a gold label outside them is a data error."""
    prompt: str
    """The Jinja template for the user message, relative to the task's root, which it must stay inside:
    the folder above benchmarks/ for a task in <root>/benchmarks/clinical/ (the built-in tasks, a
    project laid out like the repository), else the --tasks-dir folder holding the TOML."""
    system: str = ""
    """System text placed before the user message (folded into the user turn for templates without a system role)."""
    max_tokens: int = Field(default=256, ge=1, le=32768)
    """Maximum new tokens per answer."""
    reply_prefix: str = ""
    """Text that starts the assistant's reply, sent after the prompt (CLUE's cues, e.g. 'Question: '): the model
    continues it, and a kind whose parser reads cues (an option letter may follow one) sees it before the
    generated text. Loglik mode ignores it (its [loglik] answer_prefix plays that part)."""
    repeats: int = Field(default=1, ge=1, le=100)
    """How many times each item is asked, each repetition a unit (and a record) of its own: CLUE asks each
    LongHealth task-1 question 5 times with its documents shuffled, and runs tasks 2 and 3 five times with fresh
    distractors. Scores are averaged per item across repetitions, and the paired tests compare those means."""
    answer_rule: Literal["lenient", "clue"] = "lenient"
    """How `accuracy` reads a reply: 'lenient' (edgeeval's parser: many phrasings, option texts) or 'clue' (the
    study's own rule for this task, CLUE at ff75877; the lenient reading is then reported as accuracy_lenient)."""
    stop: list[str] = []
    """Stop strings ending an answer (the model's end-of-turn token always stops)."""
    metrics: list[str] = ["accuracy", "invalid_rate"]
    """What is reported; each must be one of the kind's metrics (edgeeval.kinds)."""
    few_shot: FewShotSpec | None = None
    """Solved examples before each question; none when absent."""
    context: ContextSpec = ContextSpec()
    """What to do with prompts longer than the model's window."""
    rouge_stemmer: bool = False
    """kind 'summary': Porter-stem words before ROUGE. CLUE scored with Hugging Face evaluate's rouge,
    whose default is no stemming."""
    loglik: LoglikSpec | None = None
    """How the task is scored with `--mode loglik`; a task without it runs in generation mode only."""
    retrieval: TaskRetrievalSpec = TaskRetrievalSpec()
    """For models with retrieval: which fields form the query. Few-shot turns never get passages."""
    published: PublishedSpec | None = None
    """Its place in the published study, when it has one."""
    data: DataSpec

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in kinds.KINDS:
            raise ValueError(f"unknown kind (kinds: {', '.join(kinds.KINDS)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TaskSpec":
        kind = kinds.get(self.kind)
        wrong = [m for m in self.metrics if m not in kind.metric_names]
        if wrong:
            raise ValueError(f"metrics {wrong} do not apply to kind '{self.kind}' "
                             f"(allowed: {', '.join(kind.metric_names)})")
        if kind.uses_labels and len(self.labels) < 2:
            raise ValueError(f"kind '{self.kind}' needs 'labels' (at least two)")
        if not kind.uses_labels and self.labels:
            users = [k.name for k in kinds.KINDS.values() if k.uses_labels]
            raise ValueError(f"'labels' applies to kind {', '.join(repr(u) for u in users)} only")
        if self.repeats > 1 and FORMATS[self.data.format].load_repeated is None:
            varying = ", ".join(name for name, known in FORMATS.items() if known.load_repeated is not None)
            raise ValueError(f"repeats: format '{self.data.format}' asks an item the same way every time, so its "
                             f"repetitions would be copies (formats that vary an item: {varying})")
        if self.answer_rule == "clue" and kind.clue_parse is None:
            raise ValueError(f"answer_rule 'clue' needs a kind with CLUE's rule (kind '{self.kind}' has none)")
        if self.published is not None and (unknown := set(self.published.metrics) - set(kind.metric_names)):
            raise ValueError(f"published metrics {sorted(unknown)} are not metrics of kind '{self.kind}' "
                             f"(its metrics: {', '.join(kind.metric_names)})")
        if self.loglik is not None and kind.loglik_options is None:
            able = ", ".join(k.name for k in kinds.KINDS.values() if k.loglik_options is not None)
            raise ValueError(f"'loglik' applies to kinds {able} only (this task is '{self.kind}': "
                             "its answers are free text)")
        if self.loglik is not None and self.loglik.scoring == "letter" and not kind.lettered:
            raise ValueError(f"loglik scoring 'letter' needs lettered options; a {self.kind} task scores its "
                             "answers as 'full_text'")
        return self


def load_task(path: Path) -> TaskSpec:
    """Read one task TOML; the task's name defaults to the file's stem."""
    raw = read_toml(path)
    raw.setdefault("name", path.stem)
    return validated(path, raw, TaskSpec)


def task_hash(spec: TaskSpec, template_text: str, data_sha256: str) -> str:
    """Changes whenever the task definition, its prompt template or its data file changes."""
    # The loglik section shapes loglik runs only (their hash adds the mode); generation records stay valid.
    # The retrieval query shapes only retrieval prompts, whose prompt hashes cover the passages it finds.
    # Where the task stands in the published study is for reports only; how many repetitions there are adds or
    # drops units (each has its repetition in its id), the recorded ones stay valid.
    # A data key added later leaves the hash of every task that keeps its default as it was (their records stay).
    defaults = {"document_order": "question"}
    unset = {key: True for key, value in defaults.items() if getattr(spec.data, key) == value}
    exclude: dict = {"loglik": True, "retrieval": True, "published": True, "repeats": True, "data": unset}
    payload = spec.model_dump_json(exclude=exclude) + "\0" + template_text + "\0" + data_sha256
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
