"""A deterministic stand-in for a model, with the engine's interface, for fast tests and dry runs."""

from __future__ import annotations

import hashlib
import re
import time

from edgeeval.engine import EngineSettings, Generation

_OPTION = re.compile(r"^([A-J])[.)] ", re.MULTILINE)


class FakeModel:
    """Answers from a hash of the prompt: the same prompt always gets the same answer.

    The answer style varies with the hash so that parsers see clean, chatty and unparseable
    replies; `delay_s` per answer lets tests kill a run in the middle of its work."""

    def __init__(self, path: str, settings: EngineSettings, delay_s: float = 0.0):
        self.path = path
        self.settings = settings
        self.delay_s = delay_s

    def info(self) -> dict:
        return {"backend": "fake", "system_info": "fake engine (no model)", "gpu_offload": False,
                "n_ctx": self.settings.n_ctx, "settings": self.settings.__dict__}

    def generate(self, prompt: str, max_tokens: int, stop: list[str]) -> Generation:
        if self.delay_s:
            time.sleep(self.delay_s)
        digest = hashlib.sha256(f"{self.path}\0{prompt}".encode()).digest()
        n_prompt = len(prompt.split())
        if n_prompt >= self.settings.n_ctx:
            return Generation(text=None, n_prompt_tokens=n_prompt, finish_reason="error",
                              error=f"prompt_too_long: {n_prompt} prompt tokens do not fit the "
                                    f"{self.settings.n_ctx}-token context window")
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
        return Generation(text=" ".join(words), n_prompt_tokens=n_prompt, n_output_tokens=len(words),
                          finish_reason="stop", seconds=self.delay_s)

    def close(self) -> None:
        pass
