"""Chat formatting: messages -> the model's prompt string, always rendered in the sandbox (sandbox.py).

A GGUF file's tokenizer.chat_template is untrusted code (llama-cpp-python's CVE-2024-34359 was a chat template
that ran shell commands through Jinja). GGUF templates use Jinja's lenient Undefined (Hugging Face templates
test `{% if tools %}` on variables nobody passes); our own override templates in prompts/chat/ use
StrictUndefined.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError

from edgeeval.errors import TemplateError
from edgeeval.files import read_text
from edgeeval.prompting.sandbox import (LENIENT_ENV, MAX_RENDER_CHARS, STRICT_ENV, RenderLimitError, TemplateRaised,
                                        inside_root, render_bounded)

MAX_TEMPLATE_CHARS = 1_000_000
"""Longest chat template source accepted (real ones are under 50 kB)."""
SPEC_GGUF = "gguf"
SPEC_NONE = "none"


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template ready to render. `source` is "gguf" (from the model file), "none" (plain
    completion: the messages' contents joined by blank lines, for base models), or the override file's
    path as written in the config (e.g. "prompts/chat/gemma.j2", rendered with StrictUndefined)."""

    source: str
    text: str
    bos_token: str
    eos_token: str
    _compiled: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.source == SPEC_NONE:
            return
        if len(self.text) > MAX_TEMPLATE_CHARS:
            raise TemplateError(
                f"chat template {self.source}: {len(self.text)} characters, over the {MAX_TEMPLATE_CHARS} limit"
            )
        env = LENIENT_ENV if self.source == SPEC_GGUF else STRICT_ENV
        try:
            compiled = env.from_string(self.text)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template {self.source}: syntax error at line {e.lineno}: {e.message}") from None
        except Exception as e:  # noqa: BLE001 - anything else the compiler raises on hostile input
            raise TemplateError(f"chat template {self.source}: cannot compile: {type(e).__name__}: {e}") from None
        object.__setattr__(self, "_compiled", compiled)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]); TemplateError on any
        failure, sandbox violation or limit."""
        messages = _validate_messages(messages, self.source)
        if self.source == SPEC_NONE:
            return "\n\n".join(m["content"] for m in messages)
        context = {"messages": messages, "add_generation_prompt": bool(add_generation_prompt),
                   "bos_token": self.bos_token, "eos_token": self.eos_token}
        try:
            return render_bounded(self._compiled, context)
        except TemplateRaised as e:
            raise TemplateError(f"chat template {self.source} refused the conversation: {e}") from None
        except RenderLimitError as e:
            raise TemplateError(f"chat template {self.source}: stopped: {e}") from None
        except SecurityError as e:
            raise TemplateError(f"chat template {self.source}: blocked by the sandbox: {e}") from None
        except jinja2.UndefinedError as e:
            raise TemplateError(f"chat template {self.source}: undefined variable: {e}") from None
        except RecursionError:
            raise TemplateError(f"chat template {self.source}: recursion too deep") from None
        except MemoryError:
            raise TemplateError(f"chat template {self.source}: out of memory") from None
        except Exception as e:  # noqa: BLE001 - a hostile template can raise anything; report it as ours
            raise TemplateError(f"chat template {self.source}: {type(e).__name__}: {str(e)[:500]}") from None


def _validate_messages(messages: Any, source: str) -> list[dict[str, str]]:
    if not isinstance(messages, (list, tuple)):
        raise TemplateError(f"chat template {source}: messages must be a list, got {type(messages).__name__}")
    out = []
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TemplateError(
                f"chat template {source}: message {i} must be a dict with string 'role' and 'content', got {m!r:.200}"
            )
        total += len(m["content"])
        out.append({str(k): v for k, v in m.items()})
    if total > MAX_RENDER_CHARS:
        raise TemplateError(f"chat template {source}: the conversation is {total} characters, over {MAX_RENDER_CHARS}")
    return out


def load_chat_template(
    spec: str, gguf_template: str | None, bos_token: str, eos_token: str, root: Path
) -> ChatTemplate:
    """The chat template named by `spec` (a model's `chat_template` in models.toml):

    * "gguf": the model file's tokenizer.chat_template (`gguf_template`); TemplateError if it has none;
    * "none": no chat format (base models): the messages' contents joined by blank lines;
    * anything else: a Jinja file relative to `root`, e.g. "prompts/chat/gemma.j2", which must stay inside
      `root` (no "..", absolute path or symlink leading out).
    """
    if spec == SPEC_GGUF:
        if gguf_template is None or not gguf_template.strip():
            raise TemplateError(
                "the GGUF file has no tokenizer.chat_template; name an override from prompts/chat/ in models.toml"
            )
        return ChatTemplate(SPEC_GGUF, gguf_template, bos_token, eos_token)
    if spec == SPEC_NONE:
        return ChatTemplate(SPEC_NONE, "", bos_token, eos_token)
    path = inside_root(root, spec, "chat template")
    return ChatTemplate(spec, read_text(path, TemplateError, "chat template"), bos_token, eos_token)


def prompt_hash(text: str) -> str:
    """SHA-256 hex digest of a rendered prompt (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
