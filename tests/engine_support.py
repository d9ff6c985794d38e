"""Helpers for the engine tests: a slow, obvious reference scorer, and a tiny float32 model.

Why a float32 model: on the quantized demo models llama.cpp's results for a token change when the
same numbers are summed in another order (a token's keys/values in other cache cells, another batch
layout): the activations are rounded to 8 bits before every quantized matrix product, and a change
in the last bit of a sum now and then moves a value across a rounding step, by far more than float
rounding. With float32 weights there is no such rounding, so the batched and the one-at-a-time
paths must agree to float precision: that is where the bookkeeping (positions, sequences, which
logits row scores which token) is checked, token by token.

Float precision here is that of the KV cache, which is float16 (and, without flash attention, ggml
rounds the other operand of a product with it to float16 as well): a last-bit change of a float32 sum
now and then moves a value across a float16 rounding step (2^-11 relative), so a token's log-probability
moves in proportion to its size. Measured on the tiny model over about 10,000 tokens of random items and
packings (n_batch 16, 64 and 512; the strategy of tests/test_engine_loglik.py): at most 1.8e-3 nats (a
13.7-nat token), at most 1.3e-4 of the token's size, median 3e-7; with the cache switched to float32 (a
measurement only: the engine has no such setting) at most 1.4e-5 nats, 1.2e-6 of the size. A
bookkeeping bug costs far more: the log-probability read from the row before or after the right one
moves a token by 2.1 nats (median; under 0.04 nats for 1 token in 100); a cell of another sequence left
visible, or a context cell lost, moves it by 0.7 to 1.2 nats (median). So the check is per token and
relative: TOKEN_RTOL, 1e-3 of the token's size, about 8 times the largest drift seen and far below what
a bug costs. A sum of log-probabilities (all negative) is then within TOKEN_RTOL of its own size,
however many tokens it sums; an absolute tolerance on a sum fails by chance on long options (a 139-nat
option once missed 1e-3 by 2e-4)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp as L
import numpy as np
import pytest

from edgeeval.engine import OptionScore
from edgeeval.engine.llama import LlamaModel

TOKEN_RTOL = 1e-3
TOKEN_ATOL = 1e-6  # nats: only for a token the model is all but sure of (log-prob near 0)


def assert_tokens_close(actual: list[float], reference: list[float]) -> None:
    """Per-token log-probabilities of the same tokens, scored two ways, agree (see the module doc)."""
    assert len(actual) == len(reference), (actual, reference)
    np.testing.assert_allclose(actual, reference, rtol=TOKEN_RTOL, atol=TOKEN_ATOL)


def assert_score_matches(score: OptionScore, reference: list[float]) -> None:
    """An engine score against the reference's per-token log-probabilities of the same continuation:
    the same number of tokens, each token close, and the total their sum."""
    assert score.failure is None, score
    assert score.n_tokens == len(reference) == len(score.token_logprobs)
    assert_tokens_close(score.token_logprobs, reference)
    assert score.logprob == pytest.approx(sum(score.token_logprobs), rel=1e-12, abs=1e-12)
    assert score.logprob == pytest.approx(sum(reference), rel=TOKEN_RTOL, abs=TOKEN_ATOL * len(reference))


class NaiveScorer:
    """Scores a continuation by decoding context+continuation as one sequence in its own context
    (one sequence, cleared before every item, logits for every position) and summing the
    continuation tokens' log-probabilities."""

    def __init__(self, model: LlamaModel, n_ctx: int = 2048):
        self.model = model
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = model.settings.n_ubatch
        params.n_threads = params.n_threads_batch = model.settings.n_threads
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = L.llama_init_from_model(model.model, params)
        assert self.ctx

    def token_logprobs(self, tokens: list[int], start: int, row_shift: int = 0) -> list[float]:
        """log p(tokens[j] | tokens[:j]) for j >= start. `row_shift` reads each token off another
        position's logits row instead (a bookkeeping bug on purpose, to show that the tests see one)."""
        rows = self._decode(tokens, first_row=start - 1 + min(0, row_shift))
        return [float(self._log_softmax(rows[j - 1 + row_shift])[tokens[j]]) for j in range(start, len(tokens))]

    def next_token_logprobs(self, context: list[int], targets: list[int]) -> list[float]:
        """log p(target | context) for each target: the context decoded alone in a cleared cache, as one
        sequence in one batch, and the last position's logits read. (Only that row is asked for: every row
        of Gemma's 262k-token vocabulary, copied to float64, made this reference several times slower than
        the decode itself.)"""
        last = len(context) - 1
        logprobs = self._log_softmax(self._decode(context, first_row=last)[last])
        return [float(logprobs[t]) for t in targets]

    def _decode(self, tokens: list[int], first_row: int) -> dict[int, np.ndarray]:
        """Decode `tokens` as one sequence in a cleared cache, asking for the logits of every position
        from `first_row` on; returns them by position (copies, in float64)."""
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = int(i >= first_row)
            batch.n_tokens = len(tokens)
            assert L.llama_decode(self.ctx, batch) == 0
            return {i: np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.model.n_vocab,))
                    .astype(np.float64) for i in range(max(0, first_row), len(tokens))}
        finally:
            L.llama_batch_free(batch)

    @staticmethod
    def _log_softmax(row: np.ndarray) -> np.ndarray:
        top = row.max()
        return row - top - np.log(np.exp(row - top).sum())

    def score(self, context: str, continuation: str) -> float:
        whole, start = self.model.split_tokens(context, continuation)
        return sum(self.token_logprobs(whole, start))

    def close(self) -> None:
        L.llama_free(self.ctx)


def write_tiny_f32_llama(tokenizer_from: Path, path: Path, seed: int = 0) -> Path:
    """A 2-layer llama with random float32 weights and the tokenizer of another GGUF (SmolLM2's)."""
    import gguf

    reader = gguf.GGUFReader(str(tokenizer_from))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    n_vocab, n_embd, n_head, n_head_kv, n_ff, n_layer = len(tokens), 64, 4, 2, 128, 2
    head_dim = n_embd // n_head
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-f32")
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(reader.fields["tokenizer.ggml.pre"].contents())
    writer.add_token_list(tokens)
    writer.add_token_types(reader.fields["tokenizer.ggml.token_type"].contents())
    writer.add_token_merges(reader.fields["tokenizer.ggml.merges"].contents())
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, 0.3))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd, 0.5))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_dim, n_embd, 0.5))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_dim, n_embd, 0.2))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd, 0.2))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd, 0.2))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd, 0.2))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff, 0.2))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BERT_WORDS = ["the", "patient", "has", "fever", "cough", "and", "pain", "what", "is", "dose", "of", "metformin",
              "side", "effects", "can", "i", "take", "ibuprofen", "with", "warfarin", "?", ".", ","]


def write_tiny_bert(path: Path, seed: int = 0, n_layer: int = 2) -> Path:
    """A BERT encoder (2 layers by default) with random float32 weights and a small WordPiece vocabulary, written as
    llama.cpp's converter writes a BERT model (word-initial pieces marked with '▁'): enough to run BERTScore's
    encoder path. The weights are drawn layer after layer, so a model with fewer layers and the same seed is the
    first layers of one with more."""
    import gguf

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *("\u2581" + w for w in BERT_WORDS), "s", "ing"]
    n_vocab, n_embd, n_head, n_ff, n_pos = len(vocab), 32, 4, 64, 128
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tiny-bert")
    writer.add_context_length(n_pos)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(0)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t.startswith("[") else 1 for t in vocab])  # control tokens, normal pieces
    writer.add_token_type_count(2)
    writer.add_unk_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_sep_token_id(3)
    writer.add_mask_token_id(4)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(3)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_sep_token(True)
    rng = np.random.default_rng(seed)

    def weight(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ones, zeros = np.ones(n_embd, dtype=np.float32), np.zeros(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, scale=1.0))
    writer.add_tensor("token_types.weight", weight(2, n_embd, scale=0.1))
    writer.add_tensor("position_embd.weight", weight(n_pos, n_embd, scale=0.1))
    writer.add_tensor("token_embd_norm.weight", ones)
    writer.add_tensor("token_embd_norm.bias", zeros)
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
            writer.add_tensor(f"blk.{i}.{name}.bias", zeros)
        writer.add_tensor(f"blk.{i}.attn_output_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.attn_output_norm.bias", zeros)
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.bias", np.zeros(n_ff, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
        writer.add_tensor(f"blk.{i}.ffn_down.bias", zeros)
        writer.add_tensor(f"blk.{i}.layer_output_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.layer_output_norm.bias", zeros)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
