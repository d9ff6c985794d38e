"""Task prompts: Jinja templates from prompts/, rendered sandboxed with StrictUndefined."""

from __future__ import annotations

from pathlib import Path

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from edgeeval.data import Example
from edgeeval.errors import TemplateError

# Our own templates are trusted, but they render data-file text: keep them in the sandbox too,
# and make a misspelt variable an error rather than an empty string.
_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


class TaskPrompt:
    """A task's user-message template, compiled once."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateError(f"prompt template not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read prompt template {path}: {exc}") from None
        try:
            self._template = _ENV.from_string(self.text)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{path}:{exc.lineno}: template syntax error: {exc.message}") from None

    def render(self, example: Example) -> str:
        try:
            return self._template.render(**example.fields, example_id=example.id).strip()
        except UndefinedError as exc:
            available = ", ".join(sorted([*example.fields, "example_id"]))
            raise TemplateError(
                f"{self.path}: {exc.message} while rendering example {example.id} (available: {available})"
            ) from None
        except SecurityError as exc:
            raise TemplateError(f"{self.path}: blocked by the sandbox: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any template failure is the template's fault
            raise TemplateError(f"{self.path}: failed on example {example.id}: {type(exc).__name__}: {exc}") from None
