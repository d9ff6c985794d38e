"""A model's vocabulary (text to tokens and back, end of turn, the split of a scored continuation), and
what the engine's parts say of token lists: common prefixes, a prompt too long for the window."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as L


class Vocabulary:
    """The tokenizer of a loaded model (a llama_vocab pointer, valid while the model is)."""

    def __init__(self, vocab: Any):
        self.vocab = vocab
        self.n_tokens: int = L.llama_vocab_n_tokens(vocab)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """`text`'s tokens, with the start token the model adds (unless `add_special` is False: a piece that
        follows other tokens); special tokens written as text (a chat template's markers) become themselves."""
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (L.llama_token * capacity)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            capacity = -n
            buf = (L.llama_token * capacity)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, True)
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        """The text of `tokens`: a start or end token the model adds itself is left out, other special tokens
        (a chat template's markers) are written as their text, so tokenizing the result gives them back."""
        if not tokens:
            return ""
        array = (L.llama_token * len(tokens))(*tokens)
        capacity = 8 * len(tokens) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(capacity)
            n = L.llama_detokenize(self.vocab, array, len(tokens), buf, capacity, True, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            capacity = -n
        raise RuntimeError(f"llama.cpp could not detokenize {len(tokens)} tokens")

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def token_text(self, token: int) -> bytes:
        return L.llama_vocab_get_text(self.vocab, token) or b""

    def is_end(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def bos(self) -> int:
        return int(L.llama_vocab_bos(self.vocab))

    def eos(self) -> int:
        return int(L.llama_vocab_eos(self.vocab))

    def sep(self) -> int:
        return int(L.llama_vocab_sep(self.vocab))

    def split_tokens(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Tokens of context+continuation and where the continuation starts: the context always as it is
        tokenized alone (as the prompt is, in generation), the continuation after it.

        Trailing spaces of the context belong to the continuation (" B" is one token, "B" after " " is
        not). The two are tokenized together, as lm-evaluation-harness does, so the continuation's tokens are
        the ones the model would write after the context. Where the tokenizer merges across the boundary
        (',' after 'fever,' makes ',,' one token; 'nephr' + 'itis'), lm-eval's split leaves the continuation
        no token, and it scores the option a free log-probability of 0; here the context keeps its own tokens
        and the continuation is tokenized alone after them, so every option is scored from the same context,
        by at least one token of its own."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        own = self.tokenize(context)
        whole = self.tokenize(context + continuation)
        if whole[:len(own)] == own:
            return whole, len(own)
        return own + self.tokenize(continuation, add_special=False), len(own)




def too_long(n_tokens: int, n_ctx: int) -> str:
    return f"{n_tokens} prompt tokens do not fit the {n_ctx}-token context window"
