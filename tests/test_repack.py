"""--repack auto (issue 23, item 4): the model's speeds with repacking on and off, measured once per model file and
machine and cached, weighed by the run's own mix of prompt and generated tokens."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from edgeeval.config.models import load_models_config
from edgeeval.engine import EngineSettings
from edgeeval.engine.fake import FakeModel
from edgeeval.run import repack
from edgeeval.run.planning import prepare_model, prepare_task
from edgeeval.run.repack import Mix, choose_repack, planned_mix
from edgeeval.run.runner import plan_model

from conftest import make_project

FAKE = EngineSettings(backend="fake", n_threads=1)


class Factory:
    """Fake engines as the runner's engine factory makes them, counting the loads and what they were loaded with."""

    def __init__(self):
        self.loads: list[bool | None] = []

    def __call__(self, path: Path, settings: EngineSettings) -> FakeModel:
        self.loads.append(settings.use_extra_bufts)
        return FakeModel(str(path), settings)


@pytest.fixture
def project(tmp_path):
    return load_models_config(make_project(tmp_path) / "models.toml", models_dir=str(tmp_path / "models"))


def pending(project, task: str, limit: int, max_tokens: int | None = None, mode: str = "generate"):
    model = prepare_model(project, "bio-small")
    prepared = prepare_task(project, task, None, limit, max_tokens, mode)
    [(_, units, _)] = plan_model(model, [prepared], FAKE, Factory())  # as the runner plans (with a tokenizer)
    return model, [(prepared, u) for u in units]


def test_the_mix_counts_a_shared_prefix_once_and_half_of_max_tokens(project):
    _, work = pending(project, "mednli", 4, max_tokens=10)
    mix = planned_mix(work)
    prompts = [u.prompt for _, u in work]
    shared = sum(len(os.path.commonprefix([a, b])) for a, b in zip(prompts, prompts[1:]))
    assert mix.prompt_chars == sum(map(len, prompts)) - shared and shared > 3 * len(prompts[0]) // 2
    assert mix.generated_tokens == 4 * 0.5 * 10
    _, scored = pending(project, "medqa", 2, mode="loglik")
    assert planned_mix(scored).generated_tokens == 0  # loglik generates nothing; its options are read as prompt


def test_auto_follows_the_run_s_mix_and_measures_once(project, tmp_path):
    cache = tmp_path / "cache" / "repack.json"
    model, work = pending(project, "case_challenges", 3)
    factory = Factory()
    prompt_heavy = [(replace(task, spec=task.spec.model_copy(update={"max_tokens": 1})), u) for task, u in work]
    settings, record = choose_repack(model, FAKE, prompt_heavy, factory, cache)
    # The fake reads prompts 3x faster repacked and generates 2x slower: a prompt-heavy run repacks.
    assert settings.use_extra_bufts is True and record["use_extra_bufts"] is True and record["from_cache"] is False
    assert factory.loads == [True, False] and set(record["calibration"]) == {"on", "off"}
    assert record["planned_seconds"]["on"] < record["planned_seconds"]["off"]
    generation_heavy = [(replace(task, spec=task.spec.model_copy(update={"max_tokens": 4000})), u) for task, u in work]
    settings, record = choose_repack(model, FAKE, generation_heavy, factory, cache)
    assert settings.use_extra_bufts is False and record["from_cache"] is True
    assert factory.loads == [True, False]  # measured once: the second choice came from the cache
    stored = json.loads(cache.read_text())
    assert list(stored) == [record["cache_key"]] and model.sha256 in record["cache_key"]


def test_the_user_s_choice_and_amx_are_not_measured(project, tmp_path, monkeypatch):
    model, work = pending(project, "case_challenges", 1)
    factory = Factory()
    for choice in (True, False):
        settings, record = choose_repack(model, replace(FAKE, use_extra_bufts=choice), work, factory, tmp_path / "r.json")
        assert settings.use_extra_bufts is choice and record["mode"] == ("on" if choice else "off")
    monkeypatch.setattr(repack, "cpu_has_amx", lambda: True)
    settings, record = choose_repack(model, FAKE, work, factory, tmp_path / "r.json")
    assert settings.use_extra_bufts is False and "AMX" in record["why"]
    assert factory.loads == [] and not (tmp_path / "r.json").exists()


def test_a_damaged_cache_is_measured_again(project, tmp_path):
    cache = tmp_path / "repack.json"
    cache.write_text("{not json")
    model, work = pending(project, "case_challenges", 1)
    factory = Factory()
    _, record = choose_repack(model, FAKE, work, factory, cache)
    assert record["from_cache"] is False and factory.loads == [True, False]
    cache.write_text(json.dumps({record["cache_key"]: {"on": {}}}))  # a partial entry: not trusted
    _, record = choose_repack(model, FAKE, work, factory, cache)
    assert record["from_cache"] is False and len(factory.loads) == 4


def test_mix_seconds():
    rates = {"prompt_tokens_per_s": 100.0, "gen_tokens_per_s": 10.0, "chars_per_token": 4.0}
    assert Mix(prompt_chars=4000, generated_tokens=50).seconds(rates) == pytest.approx(10 + 5)
