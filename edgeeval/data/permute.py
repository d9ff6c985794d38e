"""Option-order permutations (`--permute cyclic[:K]`): every item of a multiple-choice or label task is asked under
K cyclic rotations of its options, each rotation an example of its own (a repetition: its own prompt, prompt hash
and record, resumed, sharded and sent to a cluster like any other). The letters stay in order (A, B, C, ...) and
the texts move; gold moves with its text. A label task's rotation is the order its labels are listed in (the
template's `labels`); gold is the label itself.

Rotation r shows at position i the option that was at position (i + r) mod n, so over n rotations every option
text stands once at every position (Zheng et al., ICLR 2024, "Large Language Models Are Not Robust Multiple
Choice Selectors", use the same cyclic family for PriDe's calibration)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from edgeeval.data.example import Example
from edgeeval.errors import ConfigError

_SPEC = re.compile(r"cyclic(?::(?P<k>[0-9]+))?")
MAX_ROTATIONS = 26


@dataclass(frozen=True)
class Permutation:
    """How an item's options are reordered: `count` cyclic rotations (None: as many as the item has options)."""

    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Permutation":
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"--permute {text!r}: expected 'cyclic' or 'cyclic:K' (K rotations, 2 to {MAX_ROTATIONS})")
        count = int(match["k"]) if match["k"] else None
        if count is not None and not 2 <= count <= MAX_ROTATIONS:
            raise ConfigError(f"--permute {text!r}: K must be between 2 and {MAX_ROTATIONS} (got {count})")
        return cls(count)

    @property
    def label(self) -> str:
        """'cyclic' or 'cyclic:K', as the manifest and the report name it."""
        return "cyclic" if self.count is None else f"cyclic:{self.count}"


def rotations(keys: Sequence[str], count: int | None) -> list[list[str]]:
    """The orders an item is shown in: for rotation r, the original key at each position."""
    keys = list(keys)
    n = len(keys)
    return [keys[r:] + keys[:r] for r in range(min(count or n, n))]


def rotate_examples(examples: Sequence[Example], permutation: Permutation, labels: Sequence[str] = ()) -> list[Example]:
    """Every example under each of its rotations (repeat = rotation = r). Multiple choice: `options` rotated and
    gold the letter its text now has; a label task (`labels` given): `labels` in the rotated order, gold unchanged.
    An item already asked several times (a task with `repeats`) cannot be rotated as well."""
    rotated: list[Example] = []
    for example in examples:
        if example.repeat is not None:
            raise ConfigError(f"{example.source}: example {example.id} is already one of several repetitions; a task "
                              "with `repeats` cannot also be permuted")
        options = example.fields.get("options")
        if options:
            letters = list(options)
            for r, order in enumerate(rotations(letters, permutation.count)):
                shown = {letter: options[original] for letter, original in zip(letters, order)}
                gold = letters[order.index(example.gold)] if example.gold in order else example.gold
                rotated.append(example.model_copy(update={
                    "fields": {**example.fields, "options": shown}, "gold": gold, "repeat": r, "rotation": r,
                    "option_order": tuple(order)}))
        elif labels:
            for r, order in enumerate(rotations(labels, permutation.count)):
                rotated.append(example.model_copy(update={
                    "fields": {**example.fields, "labels": list(order)}, "repeat": r, "rotation": r,
                    "option_order": tuple(order)}))
        else:
            raise ConfigError(f"{example.source}: example {example.id} has no options or labels to permute")
    return rotated


def original_key(answer: str | None, shown: Sequence[str], order: Sequence[str]) -> str | None:
    """The original option an answer given under a rotation stands for. `shown`: the answer keys in the order shown
    (a multiple-choice item's letters; a label task's labels in their rotated order, then `order` itself); `order`:
    the original key at each shown position. None (no answer) and an answer not offered stay as they are."""
    if answer is None or answer not in shown:
        return answer
    return order[list(shown).index(answer)]
