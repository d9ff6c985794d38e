"""The Jinja sandbox every template is rendered in: chat templates (untrusted when they come from a GGUF file)
and the task prompts alike, and the rule that a template path stays inside its project.

A GGUF file's tokenizer.chat_template is untrusted code (llama-cpp-python's CVE-2024-34359 was a chat
template that ran shell commands through Jinja). Templates here are only ever rendered by
`ImmutableSandboxedEnvironment`, hardened further:

* access to any `_`-prefixed or internal attribute raises SecurityError at once (plain Jinja would return
  an Undefined that prints as '');
* the `lipsum` global is removed (it can be made to generate unbounded text); `range` is the sandbox's
  `safe_range` (at most `jinja2.sandbox.MAX_RANGE` = 100,000 items);
* work is bounded: every loop iteration, call, filter, operator and attribute lookup counts as a step
  (at most `MAX_RENDER_STEPS`, and `RENDER_TIMEOUT_S` of wall time), every value the template builds and
  the rendered output are limited to `MAX_RENDER_CHARS`, integers to `MAX_INT_BITS` bits, and operations
  that multiply sizes (`*`, `**`, `%`, str.join/replace/format, filters like join, indent, tojson) are
  checked *before* they run, so a hostile template fails fast with TemplateError instead of hanging or
  exhausting memory.

The chat environments mirror Hugging Face transformers' `apply_chat_template` (trim_blocks, lstrip_blocks,
loopcontrols, a `generation` tag, `raise_exception`, `strftime_now`, json-style `tojson`), so real chat
templates render as they do there (chat.py).
"""

from __future__ import annotations

import json
import re
import time
from contextvars import ContextVar
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.ext import Extension, loopcontrols
from jinja2.runtime import LoopContext, Namespace, Undefined, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import _PassArg

from edgeeval.errors import TemplateError

MAX_RENDER_CHARS = 1_000_000
"""Longest rendered prompt, and largest string/list/dict (counted deeply) a template may build."""
MAX_RENDER_STEPS = 1_000_000
"""Most loop iterations + calls + filters + operators + lookups in one render (real templates use a few
thousand)."""
RENDER_TIMEOUT_S = 2.0
"""Wall-clock limit for one render (checked at every step)."""
MAX_INT_BITS = 4096
"""Largest integer a template may compute with * or **."""
MAX_INT_ARG = MAX_RENDER_CHARS
"""Largest integer argument a template may pass to a call or filter (widths, counts)."""



class RenderLimitError(Exception):
    """Raised inside a render when a template exceeds a work or size limit."""


class TemplateRaised(Exception):
    """Raised by the template's own raise_exception(msg)."""


# --- per-render budget ------------------------------------------------------------------------------


class _Budget:
    __slots__ = ("steps", "deadline")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + RENDER_TIMEOUT_S


_BUDGET: ContextVar[_Budget | None] = ContextVar("edgeeval_chat_budget", default=None)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is None:  # compile-time constant folding, outside any render
        return
    budget.steps += 1
    if budget.steps > MAX_RENDER_STEPS:
        raise RenderLimitError(f"the template did more than {MAX_RENDER_STEPS} steps (an endless or huge loop?)")
    if time.monotonic() > budget.deadline:
        raise RenderLimitError(f"rendering took longer than {RENDER_TIMEOUT_S:g} s")


def _weight(value: Any, limit: int = MAX_RENDER_CHARS) -> tuple[int, int]:
    """(size, nesting depth) of a value, roughly as str()/json would write it: characters of strings, one
    per other scalar, container and container item, counted through nested containers (a shared sub-list counts each
    time it appears).
    Stops counting once over `limit`."""
    total, max_depth = 0, 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        x, depth = stack.pop()
        max_depth = max(max_depth, depth)
        if isinstance(x, (str, bytes, bytearray)):
            total += len(x)
        elif isinstance(x, bool) or x is None or isinstance(x, float):
            total += 1
        elif isinstance(x, int):
            total += x.bit_length() // 8 + 1
        elif isinstance(x, dict):
            total += 2 * len(x) + 1
            for k, v in x.items():
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(x, (list, tuple, set, frozenset)):
            total += len(x) + 1
            stack.extend((item, depth + 1) for item in x)
        elif isinstance(x, range):
            total += len(x) + 1
        elif isinstance(x, Namespace):
            attrs = x._Namespace__attrs
            total += 2 * len(attrs) + 1
            stack.extend((v, depth + 1) for v in attrs.values())
        else:
            total += 1
        if total > limit:
            return total, max_depth
    return total, max_depth


def _check_value(value: Any, what: str) -> Any:
    size, _ = _weight(value)
    if size > MAX_RENDER_CHARS:
        raise RenderLimitError(f"{what} would build a value over {MAX_RENDER_CHARS} characters/items")
    return value


def _check_args(args: Iterable[Any], what: str) -> None:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_INT_ARG:
            raise RenderLimitError(f"{what}: integer argument {a} is over the limit {MAX_INT_ARG}")
        _check_value(a, what)


def _check_estimate(estimate: int, what: str) -> None:
    if estimate > MAX_RENDER_CHARS:
        raise RenderLimitError(f"{what} would produce about {estimate} characters, over {MAX_RENDER_CHARS}")


_DIGITS = re.compile(r"\d+")


def _format_estimate(fmt: str, args: Iterable[Any]) -> int:
    """Upper bound on the size of fmt.format(*args) / fmt % args: widths written in the format string,
    plus every argument once per placeholder."""
    widths = sum(int(d) for d in _DIGITS.findall(fmt) if len(d) < 12) + sum(
        10**12 for d in _DIGITS.findall(fmt) if len(d) >= 12
    )
    placeholders = max(1, fmt.count("{") + fmt.count("%"))
    arg_size = sum(_weight(a)[0] + (a if isinstance(a, int) and not isinstance(a, bool) else 0) for a in args)
    return len(fmt) + widths + placeholders * arg_size


def _join_estimate(sep: Any, items: list[Any]) -> int:
    return len(sep) * len(items) + sum(_weight(i)[0] for i in items)


def _replace_estimate(s: str, old: Any, new: Any) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    hits = s.count(old) if old else len(s) + 1
    return len(s) + hits * len(new)


# --- the environment --------------------------------------------------------------------------------


class _GenerationTag(Extension):
    """HF's `{% generation %}...{% endgeneration %}` (marks assistant text for training masks): renders
    its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class _CodeGenerator(CodeGenerator):
    """Routes `a ~ b` through a size-checked join (plain Jinja compiles it to a bare str join)."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        autoescape = "context.eval_ctx.autoescape" if frame.eval_ctx.volatile else repr(frame.eval_ctx.autoescape)
        self.write(f"environment.edgeeval_concat({autoescape}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_LOOP_GUARD = "__edgeeval_loop_guard"


def _loop_guard(iterable: Any) -> Iterator[Any]:
    """Wraps every {% for %} iterable: one step per iteration."""
    for item in iterable:
        _tick()
        yield item


def _bounded_concat(parts: Iterable[str]) -> str:
    """Environment.concat: joins output buffers (the whole render, macros, {% set %} blocks, call blocks)."""
    out: list[str] = []
    total = 0
    for p in parts:
        total += len(p)
        if total > MAX_RENDER_CHARS:
            raise RenderLimitError(f"the rendered text is over {MAX_RENDER_CHARS} characters")
        out.append(p)
    return "".join(out)


def _finalize(value: Any) -> Any:
    """Runs on every {{ expression }} before it is converted to text."""
    return _check_value(value, "printing a value")


def _raise_exception(message: Any) -> None:
    raise TemplateRaised(str(message)[:2000])


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    """HF's tojson: plain json.dumps (Jinja's own escapes <, >, & and ' for HTML)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _filter_precheck(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Size estimates for the filters that can turn small inputs into huge outputs. Returns the (possibly
    materialized) arguments."""

    def arg(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    value = args[0] if args else None
    if name == "join":
        items = list(value) if value is not None else []
        args = (items, *args[1:])
        _check_estimate(_join_estimate(str(arg(1, "d", "")), items), "the join filter")
    elif name == "replace":
        _check_estimate(_replace_estimate(str(value), arg(1, "old", ""), arg(2, "new", "")), "the replace filter")
    elif name == "indent":
        width = arg(1, "width", 4)
        prefix = len(width) if isinstance(width, str) else int(width)
        _check_estimate(len(str(value)) + (str(value).count("\n") + 1) * prefix, "the indent filter")
    elif name == "wordwrap":
        wrapstring = arg(3, "wrapstring", None) or "\n"
        _check_estimate(len(str(value)) * (1 + len(str(wrapstring))), "the wordwrap filter")
    elif name == "format":
        _check_estimate(_format_estimate(str(value), list(args[1:]) + list(kwargs.values())), "the format filter")
    elif name in ("tojson", "pprint"):
        indent = arg(2, "indent", None) if name == "tojson" else 1
        step = len(indent) if isinstance(indent, str) else (indent or 0)
        size, depth = _weight(value)
        _check_estimate(size * (2 + step * (depth + 1)) * 6, f"the {name} filter")
    elif name == "sum":
        items = list(value) if value is not None else []
        args = (items, *args[1:])
        total = sum(_weight(i)[0] for i in items)
        if any(isinstance(i, (str, list, tuple)) for i in items):
            _check_estimate(total * max(1, len(items)) // 16, "the sum filter")
    elif name in ("batch", "slice"):
        count = arg(1, "linecount" if name == "batch" else "slices", 1)
        fill = arg(2, "fill_with", None)
        if isinstance(count, int):
            _check_estimate(_weight(value)[0] + count * (_weight(fill)[0] + 1), f"the {name} filter")
    elif name == "center":
        width = arg(1, "width", 80)
        if isinstance(width, int):
            _check_estimate(len(str(value)) + width, "the center filter")
    return args, kwargs


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 0 if _PassArg.from_obj(func) is None else 1  # context / eval_ctx / environment comes first

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        head, rest = args[:skip], args[skip:]
        _check_args((*rest, *kwargs.values()), f"the {name} filter")
        rest, kwargs = _filter_precheck(name, rest, kwargs)
        return _check_value(func(*head, *rest, **kwargs), f"the {name} filter")

    return guarded


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with bounded work and memory (see the module docstring). Task prompts
    (edgeeval.prompting.prompts) use it with Jinja's own defaults; render with `render_bounded`."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    concat = staticmethod(_bounded_concat)

    def __init__(self, undefined: type[Undefined], **options: Any) -> None:
        super().__init__(undefined=undefined, autoescape=False, finalize=_finalize, **options)
        self.globals.pop("lipsum", None)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_GUARD] = _loop_guard

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _LOOP_GUARD, [], [], None, None, lineno=loop.lineno)
        return tree

    def edgeeval_concat(self, autoescape: bool, parts: tuple[Any, ...]) -> str:
        _tick()
        _check_value(parts, "the ~ operator")
        return _bounded_concat([(markup_join if autoescape else str_join)(parts)])

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        what = f"the {operator} operator"
        _check_value(left, what)
        _check_value(right, what)
        ints = all(isinstance(v, int) for v in (left, right))
        if operator == "*":
            if ints:
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise RenderLimitError(f"{what}: the product would exceed {MAX_INT_BITS} bits")
            elif isinstance(left, int) or isinstance(right, int):
                n, seq = (left, right) if isinstance(left, int) else (right, left)
                _check_estimate(max(n, 0) * _weight(seq)[0], what)
        elif operator == "**" and ints and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS:
                raise RenderLimitError(f"{what}: the power would exceed {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_estimate(_format_estimate(left, right if isinstance(right, tuple) else [right]), what)
        return _check_value(super().call_binop(context, operator, left, right), what)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        what = f"calling {getattr(__obj, '__name__', type(__obj).__name__)!s}"
        _check_args((*args, *kwargs.values()), what)
        target = getattr(__obj, "__wrapped__", __obj)  # str.format is pre-wrapped by the sandbox
        receiver = getattr(target, "__self__", None)
        method = getattr(target, "__name__", "")
        if isinstance(receiver, (str, bytes)):
            if method in ("format", "format_map"):
                values = list(args) + list(kwargs.values())
                if method == "format_map" and args and isinstance(args[0], dict):
                    values = list(args[0].values())
                _check_estimate(_format_estimate(str(receiver), values), what)
            elif method == "join" and args:
                items = list(args[0])
                args = (items, *args[1:])
                _check_estimate(_join_estimate(receiver, items), what)
            elif method == "replace" and len(args) >= 2 and isinstance(receiver, str):
                _check_estimate(_replace_estimate(receiver, args[0], args[1]), what)
            elif method == "expandtabs":
                tab = args[0] if args else kwargs.get("tabsize", 8)
                _check_estimate(len(receiver) + (receiver.count("\t") if isinstance(receiver, str) else receiver.count(b"\t")) * int(tab), what)
            elif method in ("translate", "maketrans"):
                raise SecurityError(f"str.{method} is not allowed in chat templates")
        if isinstance(__obj, LoopContext) and args:  # a recursive loop: loop(children)
            args = (_loop_guard(args[0]), *args[1:])
        return _check_value(super().call(__context, __obj, *args, **kwargs), what)


class _Environment(BoundedSandbox):
    """The bounded sandbox set up like Hugging Face's apply_chat_template, for chat templates."""

    def __init__(self, undefined: type[Undefined]) -> None:
        super().__init__(undefined, trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.filters["tojson"] = _guard_filter("tojson", _tojson)


def render_bounded(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render a template compiled by a BoundedSandbox within one render's budget of steps, time and
    output size; RenderLimitError when it is exceeded (other failures propagate as they are)."""
    token = _BUDGET.set(_Budget())
    try:
        chunks: list[str] = []
        total = 0
        for chunk in template.generate(**context):
            total += len(chunk)
            if total > MAX_RENDER_CHARS:
                raise RenderLimitError(f"the rendered text is over {MAX_RENDER_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _BUDGET.reset(token)


LENIENT_ENV = _Environment(jinja2.Undefined)
"""For GGUF templates: Hugging Face's templates test variables nobody passes (`{% if tools %}`)."""
STRICT_ENV = _Environment(jinja2.StrictUndefined)
"""For our own templates (prompts/chat/): an undefined variable is an error."""


def inside_root(root: Path, relative: Path | str, what: str) -> Path:
    """`root / relative`, refusing a path that leaves `root` (by '..', an absolute path or a symlink): a
    task or model entry names files of the project, never /etc/passwd or another user's files."""
    path = Path(root) / relative
    try:
        path.resolve().relative_to(Path(root).resolve())
    except ValueError:
        raise TemplateError(f"{what} {str(relative)!r} is outside the project directory {root}") from None
    return path
