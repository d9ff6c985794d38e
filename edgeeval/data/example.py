"""The `Example` every loader yields, and the check that a file's examples have unique ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgeeval.data.readers import show
from edgeeval.errors import DataError


class Example(BaseModel):
    """One evaluation item, as read from a data file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    """Stable identifier: the file's own id column when it has one, else '<file stem>-<row number>'."""
    fields: dict[str, Any]
    """Variables the prompt template sees. Multiple choice: 'question' (str) and 'options' ({'A': text, ...});
    the other formats' fields are listed in edgeeval.data.formats."""
    gold: str
    """The correct answer: the option letter (multiple choice, LongHealth); the label (MedNLI, PubMedQA); the
    reference text (summaries, MeDiSumQA); the ICD-10-CM codes joined by ';' (MeDiSumCode); for LongHealth
    task 3, the letter of the 'cannot be answered' option."""
    source: str
    """Where the item came from, 'file:line' (or 'file:row N'), for error messages."""
    repeat: int | None = None
    """Which repetition of its item this is, from 0 (a task with `repeats`: LongHealth asks each question with
    its documents shuffled, or other distractors, several times); None for an item asked once."""
    rotation: int | None = None
    """Under `--permute`: which cyclic rotation of the item's options this example shows (then also `repeat`)."""
    option_order: tuple[str, ...] | None = None
    """Under `--permute`: the original option key (letter, or label) shown at each position, in order."""

    @property
    def unit_id(self) -> str:
        """What tells this example apart from the other repetitions of its item: 'id', or 'id#repeat'."""
        return self.id if self.repeat is None else f"{self.id}#{self.repeat}"


def check_unique_ids(path: Path, examples: list[Example]) -> None:
    seen: dict[str, str] = {}
    for ex in examples:
        if ex.unit_id in seen:
            raise DataError(f"{ex.source}: duplicated id {show(ex.id)} (first at {seen[ex.unit_id]})")
        seen[ex.unit_id] = ex.source
