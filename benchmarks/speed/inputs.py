"""What the benchmark measures on: the case-challenge items, the runner's prompts, the demo models and the
opt-in Qwen pair."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypedDict

from .common import CASES, N_ITEMS, ROOT, SHOTS

SUMMARY_TASKS = ("meqsum", "problem_summary", "medisumqa")
OTHER_GENERATION_TASKS = ("case_challenges", "medqa", "mednli", "pubmedqa", "medisumcode")
EXTRA_MODELS = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")
EXTRA_HINT = "the Qwen 1.5B/0.5B pair is not installed: make models-extra (or scripts/setup.sh --extra-models)"


class Item(TypedDict):
    """One multiple-choice item, as the children and the peers receive it."""

    id: str
    question: str
    options: list[str]
    letters: list[str]
    gold: int


def load_items() -> tuple[list[Item], list[Item]]:
    """30 items to score and the 3 solved examples that make the few-shot prefix (other items)."""
    from edgeeval.data.multiple_choice import load_multiple_choice

    examples = load_multiple_choice(CASES)
    rows: list[Item] = [{"id": e.id, "question": e.fields["question"], "options": list(e.fields["options"].values()),
                         "letters": list(e.fields["options"]), "gold": list(e.fields["options"]).index(e.gold)}
                        for e in examples]
    return rows[:N_ITEMS], rows[N_ITEMS : N_ITEMS + SHOTS]


def few_shot_prefix(shots: list[Item]) -> str:
    return "".join(f"{s['question']} {s['options'][s['gold']]}\n\n" for s in shots)


def letter_prompt(item: Item) -> str:
    lines = "\n".join(f"{letter}. {text}" for letter, text in zip(item["letters"], item["options"]))
    return f"{item['question']}\n\n{lines}\n\nAnswer:"


def runner_prompts(model: str, task: str = "case_challenges",
                   limit: int | None = None) -> tuple[list[str], list[str], str]:
    """The prompts the runner builds for this GGUF and task: with its models.toml entry's chat
    template when the file is one of the configured models, else with the GGUF's own template."""
    from edgeeval.config.models import ModelSpec, load_models_config
    from edgeeval.config.model_files import resolve_model_path
    from edgeeval.errors import EdgeevalError
    from edgeeval.run.planning import plan_units, prepare_model, prepare_task

    project = load_models_config(ROOT / "models.toml")
    name = None
    for candidate in project.config.models:
        try:
            if resolve_model_path(project, candidate).resolve() == Path(model).resolve():
                name = candidate
                break
        except EdgeevalError:
            continue
    if name is None:  # a GGUF of the user's: its own chat template
        name = "_measured"
        models = {**project.config.models, name: ModelSpec(path=str(Path(model).resolve()), family="general")}
        project = project.model_copy(update={"config": project.config.model_copy(update={"models": models})})
    units, _ = plan_units(prepare_model(project, name), prepare_task(project, task, None, limit))
    units = [u for u in units if u.failure is None]
    return [u.prompt for u in units], [u.example.id for u in units], f"runner prompts of model '{name}'"


def task_spec(task: str):
    from edgeeval.config.models import load_models_config
    from edgeeval.run.planning import prepare_task

    return prepare_task(load_models_config(ROOT / "models.toml"), task, None, 1).spec


def default_models() -> list[str]:
    """The bundled demo models, found the way `edgeeval demo` finds them."""
    from edgeeval.config.models import load_models_config
    from edgeeval.config.model_files import resolve_model_path

    project = load_models_config(ROOT / "models.toml")
    return [str(resolve_model_path(project, name)) for name in ("gemma3-270m", "smollm2-135m-instruct")]


def extra_models() -> tuple[str, str] | None:
    """(target, draft) paths of the opt-in Qwen pair, or None with one line saying how to get them."""
    from edgeeval.config.models import load_models_config
    from edgeeval.config.model_files import resolve_model_path
    from edgeeval.errors import EdgeevalError

    project = load_models_config(ROOT / "models.toml")
    try:
        target, draft = (str(resolve_model_path(project, name)) for name in EXTRA_MODELS)
    except EdgeevalError:
        print(EXTRA_HINT, file=sys.stderr)
        return None
    return target, draft
