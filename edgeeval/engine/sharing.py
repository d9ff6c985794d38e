"""Which part of a prompt batched generation takes from the shared prefix instead of decoding it: the rule,
in one place and free of llama.cpp, so it is tested on token lists alone.

Batched generation keeps one more sequence than it answers on, the holder. A prompt starting with (part
of) what the holder holds starts as a copy of it and decodes only the rest. The holder is set from the
prompts themselves: when the prompt about to start and the next one in the queue share a longer prefix
than the holder offers, the holder is cut back to what it shares with them and extended to their common
prefix, once for both and every later prompt that starts the same way (a task's system prompt and
shots, a patient's documents). Units are queued with such prompts adjacent: `share_order`, which the
runner applies to every task's pending units (run/runner.py), so the local runner, shards and Ray alike
send them that way."""

from __future__ import annotations

from dataclasses import dataclass

MIN_SHARED = 16
"""Tokens a prompt must share with the holder before it starts from a copy: a copy between cache streams
moves the whole stream's cells, which costs about as much as decoding a few tokens."""


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two lists share from the start."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def common_prefix_all(seqs: list[list[int]]) -> list[int]:
    if not seqs:
        return []
    first = seqs[0]
    n = len(first)
    for seq in seqs[1:]:
        n = min(n, common_prefix(first[:n], seq))
    return first[:n]


@dataclass(frozen=True)
class Share:
    """How a prompt starts: the holder is cut back to `keep` tokens and `extend` appended to it, then the
    prompt's first `use` tokens come from it (0: the prompt is decoded whole)."""

    keep: int
    extend: list[int]
    use: int

    @property
    def changes_holder(self) -> bool:
        return bool(self.extend)


def plan_share(held: list[int], prompt: list[int], following: list[int] | None,
               min_shared: int = MIN_SHARED) -> Share:
    """How `prompt` starts, given what the holder holds and the prompt queued after it (None: none). The
    last token of a prompt is never shared: it is decoded for its logits."""
    now = min(common_prefix(held, prompt), len(prompt) - 1)
    want = 0
    if following:
        want = min(common_prefix(prompt, following), len(prompt) - 1, len(following) - 1)
    if want >= min_shared and want >= now + min_shared:
        return Share(keep=now, extend=prompt[now:want], use=want)
    if now >= min_shared:
        return Share(keep=len(held), extend=[], use=now)
    return Share(keep=len(held), extend=[], use=0)


def share_order(prompts: list[str]) -> list[int]:
    """The order to answer prompts in so that those sharing a prefix are adjacent: sorted by their text (a
    sort is a walk of the prompts' prefix tree, so the longer two prompts' common prefix, the closer they
    are), ties kept in their first order. A task's shots or a patient's documents, shared by many prompts,
    are then decoded once per run of them, whatever order the data file has."""
    return sorted(range(len(prompts)), key=lambda i: prompts[i])
