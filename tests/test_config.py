"""models.toml and task TOML: valid files load; every mistake is one clear error naming file and key."""

from pathlib import Path

import pytest

from edgeeval.config.model_files import resolve_model_path
from edgeeval.config.models import load_models_config
from edgeeval.config.tasks import load_task
from edgeeval.errors import ConfigError, ModelFileError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "models.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_repository_models_toml_has_the_study_pairs():
    project = load_models_config(ROOT / "models.toml", models_dir="/nonexistent")
    pairs = project.config.pairs
    assert {"demo", "llama3-8b", "llama3-70b", "mistral-7b", "llama2-7b"} <= set(pairs)
    for name in ("llama3-8b", "llama3-70b", "mistral-7b", "llama2-7b"):
        base = project.config.models[pairs[name].baseline]
        cand = project.config.models[pairs[name].candidate]
        assert (base.family, cand.family) == ("general", "biomedical")
        assert cand.base == pairs[name].baseline
        assert "Q4_K_M" in cand.path and cand.source
    assert project.config.models["meditron-7b"].chat_template == "none"


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = write(tmp_path, '[models.a]\npath = "a.gguf"\nfamily = "general"\nchat_tempalte = "gguf"\n')
    with pytest.raises(ConfigError) as err:
        load_models_config(path)
    message = str(err.value)
    assert str(path) in message and "models.a.chat_tempalte" in message and "chat_template" in message


def test_wrong_type_and_bad_family(tmp_path):
    path = write(tmp_path, '[models.a]\npath = "a.gguf"\nfamily = "general"\nn_ctx = "big"\n')
    with pytest.raises(ConfigError, match="models.a.n_ctx"):
        load_models_config(path)
    path = write(tmp_path, '[models.a]\npath = "a.gguf"\nfamily = "oncology"\n')
    with pytest.raises(ConfigError, match="models.a.family"):
        load_models_config(path)


def test_pair_naming_unknown_model(tmp_path):
    path = write(tmp_path, '[models.a]\npath = "a.gguf"\nfamily = "general"\n[pairs.p]\nbaseline = "a"\ncandidate = "zz"\n')
    with pytest.raises(ConfigError, match="pair 'p' candidate 'zz' is not a model"):
        load_models_config(path)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[models.a\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_models_config(path)


def test_missing_model_file_says_where_it_looked(tmp_path):
    path = write(tmp_path, '[models.a]\npath = "a.gguf"\nfamily = "general"\nsource = "org/repo"\n')
    project = load_models_config(path, models_dir=str(tmp_path / "models"))
    with pytest.raises(ModelFileError) as err:
        resolve_model_path(project, "a")
    assert str(tmp_path / "models" / "a.gguf") in str(err.value) and "org/repo" in str(err.value)


def test_models_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.gguf").write_bytes(b"GGUF")
    path = write(tmp_path, '[models.a]\npath = "a.gguf"\nfamily = "general"\n')
    monkeypatch.setenv("EDGEEVAL_MODELS_DIR", str(tmp_path / "m"))
    assert resolve_model_path(load_models_config(path), "a") == tmp_path / "m" / "a.gguf"


def test_task_toml_unknown_key_and_bad_metric(tmp_path):
    good = (ROOT / "benchmarks/clinical/case_challenges.toml").read_text()
    assert load_task(ROOT / "benchmarks/clinical/case_challenges.toml").name == "case_challenges"
    with pytest.raises(ConfigError, match="unknown key 'max_token'"):
        load_task(write(tmp_path, good.replace("max_tokens", "max_token"), "t.toml"))
    with pytest.raises(ConfigError, match="metrics"):
        load_task(write(tmp_path, good.replace('"error_rate"', '"bleu"'), "t.toml"))
    with pytest.raises(ConfigError, match="data.format"):
        load_task(write(tmp_path, good.replace('format = "multiple_choice"', 'format = "xml"'), "t.toml"))
