"""Task prompts: Jinja templates from prompts/, rendered sandboxed with StrictUndefined."""

from __future__ import annotations

from pathlib import Path

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SecurityError

from edgeeval.data.example import Example
from edgeeval.errors import TemplateError
from edgeeval.files import read_text
from edgeeval.prompting.sandbox import BoundedSandbox, RenderLimitError, inside_root, render_bounded

# Our own templates are trusted, but they render data-file text: keep them in the sandbox too, with the
# chat templates' bounds on work and size (a nested loop ends in an error, not a hang), and make a
# misspelt variable an error rather than an empty string.
_ENV = BoundedSandbox(undefined=StrictUndefined, keep_trailing_newline=False)


class TaskPrompt:
    """A task's user-message template, compiled once. With `root`, `path` is relative to it and must stay
    inside it; without, a path that climbs out with '..' is still refused."""

    def __init__(self, path: Path, root: Path | None = None):
        if root is not None:
            path = inside_root(root, path, "prompt template")
        elif ".." in Path(path).parts:
            raise TemplateError(f"prompt template {str(path)!r} is outside the project directory (it climbs out with '..')")
        self.path = path
        self.text = read_text(path, TemplateError, "prompt template")
        try:
            self._template = _ENV.from_string(self.text)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{path}:{exc.lineno}: template syntax error: {exc.message}") from None

    def render(self, example: Example) -> str:
        return _render(self._template, {**example.fields, "example_id": example.id}, str(self.path), example)


class AnswerTemplate:
    """The assistant's turn of a few-shot example (a task's `few_shot.answer`): Jinja text that sees the
    example's fields and `gold`. `what` names it in error messages."""

    def __init__(self, text: str, what: str):
        self.text = text
        self.what = what
        try:
            self._template = _ENV.from_string(text)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{what}:{exc.lineno}: template syntax error: {exc.message}") from None

    def render(self, example: Example) -> str:
        context = {**example.fields, "gold": example.gold, "example_id": example.id}
        return _render(self._template, context, self.what, example)


def _render(template, context: dict, where: str, example: Example) -> str:
    """Render within the sandbox's bounds; every failure is a TemplateError naming the template and example."""
    try:
        return render_bounded(template, context).strip()
    except UndefinedError as exc:
        available = ", ".join(sorted(context))
        raise TemplateError(
            f"{where}: {exc.message} while rendering example {example.id} (available: {available})"
        ) from None
    except SecurityError as exc:
        raise TemplateError(f"{where}: blocked by the sandbox: {exc}") from None
    except RenderLimitError as exc:
        raise TemplateError(f"{where}: stopped on example {example.id}: {exc}") from None
    except RecursionError:
        raise TemplateError(f"{where}: recursion too deep on example {example.id}") from None
    except Exception as exc:  # noqa: BLE001 - any template failure is the template's fault
        raise TemplateError(f"{where}: failed on example {example.id}: {type(exc).__name__}: {exc}") from None
