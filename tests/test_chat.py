"""edgeeval.prompting.chat and its sandbox: chat templates render in a hardened Jinja sandbox; hostile GGUF templates cannot run code,
hang, or exhaust memory."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import datetime
from pathlib import Path

import gguf
import jinja2.sandbox
import numpy as np
import pytest

from edgeeval.config.gguf import read_gguf_metadata
from edgeeval.errors import TemplateError
from edgeeval.prompting.chat import ChatTemplate, load_chat_template, prompt_hash
from edgeeval.prompting.sandbox import MAX_RENDER_CHARS

from conftest import takes_at_most

REPO = Path(__file__).resolve().parents[1]
SYSTEM_USER = [
    {"role": "system", "content": "You are a careful clinician."},
    {"role": "user", "content": "Which drug treats hypertension? A) insulin B) lisinopril"},
]
MULTI_TURN = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def override(name: str, bos: str = "<s>", eos: str = "</s>") -> ChatTemplate:
    return load_chat_template(f"prompts/chat/{name}.j2", None, bos, eos, REPO)


def gguf_template(text: str) -> ChatTemplate:
    return ChatTemplate("gguf", text, "<s>", "</s>")


def write_gguf_with_template(path: Path, template: str) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("hostile")
    w.add_chat_template(template)
    w.add_tensor("w", np.zeros(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- override templates: exact official formats -------------------------------------------------------------


GOLDEN_SYSTEM_USER = {
    "gemma": (
        "<start_of_turn>user\nYou are a careful clinician.\n\n"
        "Which drug treats hypertension? A) insulin B) lisinopril<end_of_turn>\n<start_of_turn>model\n"
    ),
    "llama2": (
        "[INST] <<SYS>>\nYou are a careful clinician.\n<</SYS>>\n\n"
        "Which drug treats hypertension? A) insulin B) lisinopril [/INST]"
    ),
    "llama3": (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a careful clinician.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhich drug treats hypertension? A) insulin B) lisinopril<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "mistral-instruct": (
        "[INST] You are a careful clinician.\n\nWhich drug treats hypertension? A) insulin B) lisinopril [/INST]"
    ),
    "chatml": (
        "<|im_start|>system\nYou are a careful clinician.<|im_end|>\n"
        "<|im_start|>user\nWhich drug treats hypertension? A) insulin B) lisinopril<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}

GOLDEN_MULTI_TURN = {
    "gemma": (
        "<start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n"
    ),
    "llama2": "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    "llama3": (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "mistral-instruct": "[INST] S\n\nU1 [/INST]A1</s>[INST] U2 [/INST]",
    "chatml": (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_SYSTEM_USER))
def test_override_system_user(name: str) -> None:
    template = override(name)
    assert template.source == f"prompts/chat/{name}.j2"
    assert template.render(SYSTEM_USER) == GOLDEN_SYSTEM_USER[name]


@pytest.mark.parametrize("name", sorted(GOLDEN_MULTI_TURN))
def test_override_multi_turn(name: str) -> None:
    assert override(name).render(MULTI_TURN) == GOLDEN_MULTI_TURN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN_SYSTEM_USER))
def test_override_never_emits_bos(name: str) -> None:
    text = override(name, bos="<BOS>").render(SYSTEM_USER)
    assert "<BOS>" not in text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemma", "<start_of_turn>user\nhi<end_of_turn>\n"),
        ("llama3", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"),
        ("chatml", "<|im_start|>user\nhi<|im_end|>\n"),
        ("llama2", "[INST] hi [/INST]"),
        ("mistral-instruct", "[INST] hi [/INST]"),
    ],
)
def test_override_user_only_without_generation_prompt(name: str, expected: str) -> None:
    assert override(name).render([{"role": "user", "content": "hi"}], add_generation_prompt=False) == expected


@pytest.mark.parametrize("name", ["gemma", "llama2", "mistral-instruct"])
def test_override_rejects_non_alternating_roles(name: str) -> None:
    with pytest.raises(TemplateError, match="alternate"):
        override(name).render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_override_templates_are_strict(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{{ messages[0].content }}{{ not_a_variable }}")
    template = load_chat_template("t.j2", None, "<s>", "</s>", tmp_path)
    with pytest.raises(TemplateError, match="not_a_variable"):
        template.render(SYSTEM_USER)


def test_gguf_templates_are_lenient() -> None:
    """HF templates test variables nobody passes ({% if tools %}); that must not fail."""
    text = "{% if tools %}T{% endif %}{% if documents is defined %}D{% endif %}{{ messages[-1]['content'] }}"
    assert gguf_template(text).render(SYSTEM_USER) == SYSTEM_USER[-1]["content"]


# --- the real SmolLM2 template and HF compatibility -----------------------------------------------------------


def test_smollm2_template() -> None:
    template = load_chat_template("gguf", SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>", REPO)
    assert template.source == "gguf"
    assert template.render(SYSTEM_USER) == GOLDEN_SYSTEM_USER["chatml"]
    assert template.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False).endswith("Hi<|im_end|>\n")


def test_smollm2_template_read_from_gguf(tmp_path: Path) -> None:
    info = read_gguf_metadata(write_gguf_with_template(tmp_path / "m.gguf", SMOLLM2_TEMPLATE))
    template = load_chat_template("gguf", info.chat_template, "<|im_start|>", "<|im_end|>", REPO)
    assert template.render(SYSTEM_USER) == GOLDEN_SYSTEM_USER["chatml"]


def test_hf_environment_features() -> None:
    text = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}|{{ bos_token }}{{ eos_token }}|"
        "{{ {'a': '<é>'}|tojson }}|{{ strftime_now('%Y') }}"
    )
    year = datetime.now().year
    out = gguf_template(text).render(SYSTEM_USER)
    # A render at midnight on New Year's Eve may see either year.
    assert out in {f"You are a careful clinician.|<s></s>|{{\"a\": \"<é>\"}}|{y}" for y in (year, datetime.now().year)}


def test_trim_and_lstrip_blocks_like_hf() -> None:
    text = "{% for m in messages %}\n    {% if true %}\n[{{ m.role }}]\n    {% endif %}\n{% endfor %}"
    assert gguf_template(text).render(SYSTEM_USER) == "[system]\n[user]\n"


def test_raise_exception() -> None:
    with pytest.raises(TemplateError, match="gguf refused the conversation: System role not supported"):
        gguf_template("{{ raise_exception('System role not supported') }}").render(SYSTEM_USER)


# --- load_chat_template ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_gguf_without_template_is_an_error(missing: str | None) -> None:
    with pytest.raises(TemplateError) as e:
        load_chat_template("gguf", missing, "<s>", "</s>", REPO)
    assert "no tokenizer.chat_template; name an override from prompts/chat/ in models.toml" in str(e.value)


def test_none_is_plain_completion() -> None:
    template = load_chat_template("none", "{{ ignored }}", "<s>", "</s>", REPO)
    assert template.source == "none"
    assert template.render(SYSTEM_USER) == (
        "You are a careful clinician.\n\nWhich drug treats hypertension? A) insulin B) lisinopril"
    )
    assert template.render([{"role": "user", "content": "Q: 2+2?\nA:"}]) == "Q: 2+2?\nA:"


def test_missing_override() -> None:
    with pytest.raises(TemplateError, match=r"prompts/chat/nope.j2: chat template not found"):
        load_chat_template("prompts/chat/nope.j2", None, "<s>", "</s>", REPO)


def test_override_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "bad.j2").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(TemplateError, match="bad.j2: syntax error at line 1"):
        load_chat_template("bad.j2", None, "<s>", "</s>", tmp_path)


def test_gguf_syntax_error() -> None:
    with pytest.raises(TemplateError, match="chat template gguf: syntax error"):
        load_chat_template("gguf", "{% if %}", "<s>", "</s>", REPO)


def test_override_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1.j2").write_bytes(b"caf\xe9")
    with pytest.raises(TemplateError, match="not valid UTF-8"):
        load_chat_template("latin1.j2", None, "<s>", "</s>", tmp_path)


@pytest.mark.parametrize(
    "messages",
    [
        "not a list",
        [{"role": "user"}],
        [{"role": "user", "content": 3}],
        [["user", "hi"]],
        [{"role": "user", "content": "x" * (MAX_RENDER_CHARS + 1)}],
    ],
)
def test_bad_messages(messages: object) -> None:
    with pytest.raises(TemplateError):
        override("chatml").render(messages)  # type: ignore[arg-type]


def test_chat_template_is_frozen() -> None:
    template = override("chatml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.text = "{{ 1 }}"  # type: ignore[misc]
    assert template == override("chatml")


def test_prompt_hash() -> None:
    assert prompt_hash("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert prompt_hash("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


# --- hostile templates, delivered inside a GGUF file ---------------------------------------------------------

SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__()[0].__init__.__globals__['sys'].modules['os'].popen('touch SENTINEL').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch SENTINEL').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__['os'].system('touch SENTINEL') }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ lipsum.__globals__['os'].popen('touch SENTINEL').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch SENTINEL') }}",
    "{{ self.__init__.__globals__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ (''|attr('__class__')|attr('__mro__'))[1] }}",
    "{{ messages|attr('__class__')|attr('__base__')|attr('__subclasses__')() }}",
    "{{ request|attr('application')|attr('__globals__') }}",
    "{{ raise_exception.__globals__['os'].system('touch SENTINEL') }}",
    "{{ strftime_now.__globals__ }}",
    "{{ messages.__class__ }}",
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "{{ messages[0].update({'content': 'x'}) }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__()|map(attribute='__init__')|list }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ messages|selectattr('__class__')|list }}",
    "{{ loop.__class__ }}{% for x in messages %}{{ loop.__class__ }}{% endfor %}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% extends '/etc/passwd' %}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_ssti_payload_in_gguf_is_blocked(tmp_path: Path, payload: str) -> None:
    sentinel = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    info = read_gguf_metadata(write_gguf_with_template(tmp_path / "evil.gguf", payload.replace("SENTINEL", str(sentinel))))
    template = load_chat_template("gguf", info.chat_template, "<s>", "</s>", tmp_path)
    try:
        with pytest.raises(TemplateError):
            template.render(SYSTEM_USER)
        assert SYSTEM_USER[0]["content"] == "You are a careful clinician."  # not mutated
    finally:
        assert not sentinel.exists(), "a chat template ran a shell command"


DOS_PAYLOADS = [
    "{% for x in range(10**9) %}x{% endfor %}",
    "{% for x in range(100001) %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "{% for x in messages recursive %}{{ loop(range(100000)) }}{% endfor %}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{{ 'x' * 10**9 }}",
    "{{ [0] * 10**9 }}",
    "{{ 10 ** (10 ** 7) }}",
    "{{ 2 ** 100000 }}",
    "{% set ns = namespace(i=3) %}{% for _ in range(64) %}{% set ns.i = ns.i * ns.i %}{% endfor %}",
    "{% set ns = namespace(s='x') %}{% for _ in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s='x') %}{% for _ in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{% set s = 'x' * 1000000 %}{% set t %}{% for _ in range(100000) %}{{ s }}{% endfor %}{% endset %}{{ t }}",
    "{% set s = 'x' * 1000000 %}{% macro m() %}{% for _ in range(100000) %}{{ s }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "{% for _ in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "{% set s = 'x' * 1000 %}{{ s.replace('x', s) }}",
    "{% set s = 'x' * 1000 %}{{ s|replace('x', s) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ 'x'.center(10**12) }}",
    "{{ 'x'|center(10**9) }}",
    "{{ '{:>999999}{:>999999}'.format(1, 2) }}",
    "{{ '%999999s%999999s' % (1, 2) }}",
    "{{ '%s'|format('x' * 999999) * 2 }}",
    "{{ range(100000)|map('string')|join('x' * 1000) }}",
    "{{ ('x' * 1000).join(range(100000)|map('string')) }}",
    "{% set s = 'x' * 100000 %}{{ [s, s, s, s, s, s, s, s, s, s, s] }}",
    "{{ range(100000)|batch(1)|sum(start=[]) }}",
    "{{ [1]|batch(1000000, 'x' * 1000000) }}",
    "{{ ('\n' * 100000)|indent('y' * 100) }}",
    "{{ range(100000)|list|tojson(indent=100) }}",
    "{% set ns = namespace(x=[]) %}{% for _ in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}",
    "{{ ('\t' * 1000).expandtabs(1000000) }}",
    "{{ 'a'.translate({97: 'b'}) }}",
]


@pytest.mark.parametrize("payload", DOS_PAYLOADS)
def test_resource_exhaustion_in_gguf_fails_fast(tmp_path: Path, payload: str) -> None:
    info = read_gguf_metadata(write_gguf_with_template(tmp_path / "dos.gguf", payload))
    template = load_chat_template("gguf", info.chat_template, "<s>", "</s>", tmp_path)
    with takes_at_most(cpu_s=4):
        with pytest.raises(TemplateError):
            template.render(SYSTEM_USER)


def test_sandbox_range_limit_is_in_force() -> None:
    assert jinja2.sandbox.MAX_RANGE == 100_000
    assert gguf_template("{{ range(100000)|length }}").render(SYSTEM_USER) == "100000"
    with pytest.raises(TemplateError, match="MAX_RANGE"):
        gguf_template("{{ range(100001)|length }}").render(SYSTEM_USER)


def test_limits_leave_room_for_real_prompts() -> None:
    """A long prompt near the output limit and a moderately busy template still render."""
    long = "word " * 150_000
    out = override("chatml").render([{"role": "user", "content": long}])
    assert len(out) > 750_000
    busy = "{% for i in range(1000) %}{% for m in messages %}{{ m.role|upper|length }}{% endfor %}{% endfor %}"
    assert gguf_template(busy).render(SYSTEM_USER) == "64" * 1000
    assert gguf_template("{{ 'x' * 1000000 }}").render(SYSTEM_USER) == "x" * MAX_RENDER_CHARS


def test_state_is_clean_after_a_failed_render() -> None:
    template = override("chatml")
    with pytest.raises(TemplateError):
        gguf_template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}").render(
            SYSTEM_USER
        )
    assert template.render(SYSTEM_USER) == GOLDEN_SYSTEM_USER["chatml"]


# --- real-world templates (kept as fixtures: see tests/fixtures/chat_templates/README.md) -------------------

REAL_TEMPLATE_DIR = Path(__file__).parent / "fixtures" / "chat_templates"
# The study's models (models.toml) -> the official chat template of their family (see the README for where
# each file comes from): Llama 3 Instruct's (OpenBioLLM was fine-tuned from it and uses its format), Mistral
# 7B Instruct v0.1's (BioMistral's starting point), Llama 2 chat's (Llama 2 7B and Meditron 7B are base
# models that the study runs without a chat format; their family's template is checked all the same).
STUDY_TEMPLATES = {
    "llama3-8b-instruct": "meta-llama-Meta-Llama-3-8B-Instruct.jinja",
    "llama3-70b-instruct": "meta-llama-Meta-Llama-3-8B-Instruct.jinja",
    "openbiollm-8b": "meta-llama-Meta-Llama-3-8B-Instruct.jinja",
    "openbiollm-70b": "meta-llama-Meta-Llama-3-8B-Instruct.jinja",
    "mistral-7b-instruct": "mistralai-Mistral-7B-Instruct-v0.1.jinja",
    "biomistral-7b": "mistralai-Mistral-7B-Instruct-v0.1.jinja",
    "llama2-7b": "meta-llama-Llama-2-7b-chat-hf.jinja",
    "meditron-7b": "meta-llama-Llama-2-7b-chat-hf.jinja",
    # The speed benchmark's opt-in pair (not study models): Qwen2.5's template, embedded in their GGUFs.
    "qwen2.5-coder-1.5b-instruct": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwen2.5-coder-0.5b-instruct": "Qwen-Qwen2.5-7B-Instruct.jinja",
}
REAL_TEMPLATES = sorted({*STUDY_TEMPLATES.values(), "mistralai-v1-with-system-prompt.jinja",
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "google-gemma-2-2b-it.jinja",
    "microsoft-Phi-3.5-mini-instruct.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "HuggingFaceTB-SmolLM3-3B.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
    "ibm-granite-granite-3.3-2B-Instruct.jinja",
})


def hf_reference_render(source: str, messages: list[dict[str, str]], bos_token: str = "<s>",
                        eos_token: str = "</s>") -> str:
    """How transformers' apply_chat_template renders: a plain ImmutableSandboxedEnvironment."""
    import json

    import jinja2.ext
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):  # type: ignore[no-untyped-def]
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_r"), [], [], body).set_lineno(lineno)

        def _r(self, caller):  # type: ignore[no-untyped-def]
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source).render(messages=messages, add_generation_prompt=True, bos_token=bos_token,
                                         eos_token=eos_token)


@pytest.mark.parametrize("name", REAL_TEMPLATES)
def test_real_world_templates_render_like_hf(name: str) -> None:
    source = (REAL_TEMPLATE_DIR / name).read_text(encoding="utf-8")
    template = ChatTemplate("gguf", source, "<s>", "</s>")
    for messages in (SYSTEM_USER, SYSTEM_USER[1:], MULTI_TURN):
        try:
            expected = hf_reference_render(source, messages)
        except jinja2.TemplateError:
            with pytest.raises(TemplateError):
                template.render(messages)
        else:
            # Some templates print today's date (strftime_now): a render that crosses midnight may show
            # either day, so the reference is rendered again afterwards and either one is accepted.
            rendered = template.render(messages)
            assert rendered in (expected, hf_reference_render(source, messages))


def test_every_study_model_has_its_template_fixture() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    models = tomllib.loads((REPO / "models.toml").read_text())["models"]
    # The demo models ship on PyPI; a retrieval arm (base_model) formats its prompts with its base's template.
    study = {name for name, spec in models.items() if "package" not in spec and "base_model" not in spec}
    assert study == set(STUDY_TEMPLATES)
    readme = (REAL_TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    for name in REAL_TEMPLATES:
        assert (REAL_TEMPLATE_DIR / name).is_file() and name in readme, f"{name}: fixture or its source missing"


# The override templates under prompts/chat/ must render what the official templates render, less the
# BOS token they deliberately leave to llama.cpp's tokenizer.
OFFICIAL_FOR_OVERRIDE = {
    "llama3": ("meta-llama-Meta-Llama-3-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>",
               [SYSTEM_USER, SYSTEM_USER[1:], MULTI_TURN]),
    "llama2": ("meta-llama-Llama-2-7b-chat-hf.jinja", "<s>", "</s>", [SYSTEM_USER, SYSTEM_USER[1:], MULTI_TURN]),
    # Mistral v0.1's own template has no system role, and after an answer writes "</s> " where the
    # override writes "</s>" (the later v0.2/Mixtral form): only the single-turn user prompt is compared.
    "mistral-instruct": ("mistralai-Mistral-7B-Instruct-v0.1.jinja", "<s>", "</s>", [SYSTEM_USER[1:]]),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_FOR_OVERRIDE))
def test_override_templates_render_like_the_official_ones(name: str) -> None:
    official, bos, eos, conversations = OFFICIAL_FOR_OVERRIDE[name]
    source = (REAL_TEMPLATE_DIR / official).read_text(encoding="utf-8")
    for messages in conversations:
        expected = hf_reference_render(source, messages, bos_token=bos, eos_token=eos)
        assert expected.startswith(bos)
        assert override(name, bos=bos, eos=eos).render(messages) == expected[len(bos):]
