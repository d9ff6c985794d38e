"""A deterministic stand-in for a model, with the engine's interface, for fast tests and dry runs."""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from typing import Any

from edgeeval.engine import EngineError, EngineSettings, Generation, OptionScore
from edgeeval.types import ErrorKind

_OPTION = re.compile(r"^([A-J])[.)] ", re.MULTILINE)


class FakeModel:
    """Answers from a hash of the prompt: the same prompt always gets the same answer.

    The answer style varies with the hash so that parsers see clean, chatty and unparseable
    replies; `delay_s` per answer lets tests kill a run in the middle of its work."""

    def __init__(self, path: str, settings: EngineSettings, delay_s: float = 0.0):
        self.path = path
        # Answers depend on the model file's name, not its directory, so tests in temporary
        # directories get the same answers every time.
        self._key = os.path.basename(path)
        self.settings = settings
        self.delay_s = delay_s
        self.counters = {"prompt_tokens": 0, "prompt_tokens_decoded": 0, "generated_tokens": 0,
                         "decode_calls": 0, "decode_seconds": 0.0}

    def info(self) -> dict[str, Any]:
        return {"backend": "fake", "system_info": "fake engine (no model)", "gpu_offload": False,
                "n_ctx": self.settings.n_ctx, "settings": self.settings.__dict__, "tokens": dict(self.counters)}

    def calibrate(self, n_prompt: int, n_gen: int) -> dict[str, float]:
        """Made-up speeds in the shape of the real ones: repacking reads prompts faster and generates slower here
        (the trade measured on an AMD EPYC, exaggerated), so a test sees --repack auto follow the run's mix."""
        on = bool(self.settings.use_extra_bufts)
        return {"prompt_tokens": n_prompt, "prompt_tokens_per_s": 300.0 if on else 100.0,
                "generated_tokens": n_gen, "gen_tokens_per_s": 10.0 if on else 20.0, "chars_per_token": 4.0}

    def generate(self, prompt: str, max_tokens: int, stop: list[str], speculative: str | None = None) -> Generation:
        """A hashed answer; with `speculative` the notes say so, as the real engine's do (the answer is the same)."""
        if self.delay_s:
            time.sleep(self.delay_s)
        digest = hashlib.sha256(f"{self._key}\0{prompt}".encode()).digest()
        n_prompt = len(prompt.split())
        if n_prompt >= self.settings.n_ctx:
            return Generation.failed(ErrorKind.PROMPT_TOO_LONG, self._too_long(n_prompt), n_prompt_tokens=n_prompt)
        letters = _OPTION.findall(prompt) or ["A", "B", "C", "D"]
        letter = letters[digest[0] % len(letters)]
        style = digest[1] % 8
        if style == 0:
            text = "I am not able to choose between these options."
        elif style < 4:
            text = f"The answer is {letter}. It fits the findings best."
        else:
            text = f"**Answer: {letter}**"
        words = text.split()[:max_tokens]
        notes = {}
        if speculative not in (None, "none"):
            notes["speculative"] = {"method": speculative, "drafted": len(words), "accepted": len(words) // 2}
        return Generation(text=" ".join(words), n_prompt_tokens=n_prompt, n_output_tokens=len(words),
                          finish_reason="stop", seconds=self.delay_s, notes=notes)

    def generate_many(self, prompts: list[str], max_tokens: int, stop: list[str],
                      n_parallel: int | None = None, speculative: str | None = None) -> list[Generation]:
        """The answers `generate` gives, one per prompt (the fake has no batch effects)."""
        return [self.generate(prompt, max_tokens, stop, speculative) for prompt in prompts]

    def loglikelihood(self, context: str, continuations: list[str]) -> list[OptionScore]:
        return self.loglikelihood_many([(context, continuations)])[0]

    def loglikelihood_many(self, items: list[tuple[str, list[str]]]) -> list[list[OptionScore]]:
        """Per option, a token count (its words) and per-token log-probabilities from a hash of
        (model, context, option): stable across calls, packings and processes."""
        return [[self._option_score(context, option) for option in options] for context, options in items]

    def _option_score(self, context: str, option: str) -> OptionScore:
        n_context = len(context.split())
        n_tokens = len(option.split())
        if not option.strip():
            return OptionScore.failed(ErrorKind.EMPTY_CONTINUATION, f"{option!r} has no tokens")
        if n_context + n_tokens > self.settings.n_ctx:
            return OptionScore.failed(ErrorKind.PROMPT_TOO_LONG, self._too_long(n_context + n_tokens))
        self.counters["prompt_tokens"] += n_context + n_tokens
        digest = hashlib.sha256(f"{self._key}\0{context}\0{option}".encode()).digest()
        logprobs = [-0.05 - 4.0 * digest[i % 32] / 255 for i in range(n_tokens)]
        greedy = [digest[(i + 7) % 32] < 64 for i in range(n_tokens)]
        return OptionScore.scored(logprobs, greedy, n_context)

    def letter_logprobs(self, prompt: str, letters: list[str]) -> dict[str, float]:
        """A softmax over the letters and one 'anything else' outcome, from a hash of the prompt."""
        if len(prompt.split()) >= self.settings.n_ctx:
            raise EngineError(ErrorKind.PROMPT_TOO_LONG, self._too_long(len(prompt.split())))
        for letter in letters:
            if len(letter.split()) != 1:
                raise EngineError(ErrorKind.NOT_SINGLE_TOKEN, f"{letter!r} is not one token after this prompt; "
                                  "score the options with loglikelihood instead")
        digest = hashlib.sha256(f"{self._key}\0{prompt}".encode()).digest()
        scores = [4.0 * digest[i % 32] / 255 for i in range(len(letters) + 1)]
        log_total = math.log(sum(math.exp(x) for x in scores))
        return {letter: score - log_total for letter, score in zip(letters, scores)}

    def count_tokens(self, texts: list[str]) -> list[int]:
        """A fake token is a word."""
        return [len(text.split()) for text in texts]

    def token_slice(self, text: str, start: int | None, end: int | None) -> str:
        """Each word with the white space after it, so a slice keeps the text's own spacing."""
        return "".join(re.findall(r"\S+\s*", text)[start:end])

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit-length bag-of-words vectors (each lower-cased word hashed into one of 64 dimensions, with
        the model's name): texts that share words are near, so retrieval tests can tell a match."""
        vectors = []
        for text in texts:
            vector = [0.0] * 64
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                digest = hashlib.sha256(f"{self._key}\0{word}".encode()).digest()
                vector[digest[0] % 64] += 1.0 if digest[1] % 2 else -1.0
            norm = math.sqrt(sum(x * x for x in vector))
            vectors.append([x / norm for x in vector] if norm else vector)
        self.counters["prompt_tokens"] += sum(len(text.split()) for text in texts)
        return vectors

    def token_embeddings(self, texts: list[str]) -> list[dict[str, Any]]:
        """A fake encoder: [CLS], each lower-cased word as a 16-dimensional vector drawn from its hash (the same
        word, the same vector), [SEP]; the two ends are the special tokens BERTScore does not weigh."""
        out = []
        for text in texts:
            words = ["[CLS]", *re.findall(r"[a-z0-9]+", text.lower()), "[SEP]"]
            vectors = [[b / 255 - 0.5 for b in hashlib.sha256(f"{self._key}\0{w}".encode()).digest()[:16]]
                       for w in words]
            ids = [int.from_bytes(hashlib.sha256(w.encode()).digest()[:3], "big") for w in words]
            out.append({"tokens": ids, "special": [i in (0, len(words) - 1) for i in range(len(words))],
                        "vectors": vectors})
            self.counters["prompt_tokens"] += len(words)
        return out

    def _too_long(self, n_tokens: int) -> str:
        return f"{n_tokens} prompt tokens do not fit the {self.settings.n_ctx}-token context window"

    def close(self) -> None:
        pass
