"""The GGUF format, read safely: a file's header, metadata and tensor table in one pass, without loading tensors.

GGUF files are untrusted input: every length and count read from the file is checked against the bytes
that remain before anything is read or allocated, so a corrupt, truncated or hostile file gives a
`ModelFileError` that says what is wrong and where, never a MemoryError, struct.error or a hang.

The format (little-endian, versions 2 and 3; see ggml/docs/gguf.md and ggml/src/gguf.cpp):

    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x   (string key | u32 value_type | value)
    tensor_count x (string name | u32 n_dims | n_dims x i64 dim | u32 ggml_type | u64 offset)
    padding to general.alignment (default 32) | tensor data

    string = u64 byte length | UTF-8 bytes;  array = u32 item_type | u64 count | items (arrays may nest)

Large arrays (the tokenizer vocabulary, merges, scores) are skipped and kept only as a summary, so the
metadata of a 10 GB model fits in a few kilobytes.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from edgeeval.config.gguf_types import GGML_TYPES, quantization_name
from edgeeval.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

MAX_KV_COUNT = 1_000_000
"""More key/value pairs than this is treated as corruption (real files have a few dozen)."""
MAX_TENSOR_COUNT = 1_000_000
"""More tensors than this is treated as corruption (real files have at most a few thousand)."""
MAX_STRING_BYTES = 64 * 1024 * 1024
"""Longest string accepted (chat templates are tens of kilobytes; nothing legitimate is near this)."""
MAX_RETAINED_BYTES = 64 * 1024 * 1024
"""Most string bytes kept in `GGUFInfo.metadata` in total."""
MAX_ARRAY_DEPTH = 8
"""Deepest nesting of arrays inside arrays."""
MAX_ARRAY_ITEMS_KEPT = 64
"""Arrays longer than this are stored as {"type": "array", "item_type": ..., "len": N}."""
MAX_VARIABLE_ITEMS = 16_000_000
"""Most strings/sub-arrays walked one by one while skipping large arrays (bounds the work on hostile files;
the biggest real vocabularies plus merges are well under 2 million)."""
GGML_MAX_DIMS = 4
"""llama.cpp's limit on tensor dimensions."""
GGML_MAX_NAME = 64
"""llama.cpp rejects tensor names of this many bytes or more."""
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)

_TYPE_NAMES = {
    _UINT8: "uint8",
    _INT8: "int8",
    _UINT16: "uint16",
    _INT16: "int16",
    _UINT32: "uint32",
    _INT32: "int32",
    _FLOAT32: "float32",
    _BOOL: "bool",
    _STRING: "string",
    _ARRAY: "array",
    _UINT64: "uint64",
    _INT64: "int64",
    _FLOAT64: "float64",
}

# Fixed-size value types: struct format character and size in bytes.
_SCALAR_FORMATS: dict[int, tuple[str, int]] = {
    _UINT8: ("B", 1),
    _INT8: ("b", 1),
    _UINT16: ("H", 2),
    _INT16: ("h", 2),
    _UINT32: ("I", 4),
    _INT32: ("i", 4),
    _FLOAT32: ("f", 4),
    _BOOL: ("?", 1),
    _UINT64: ("Q", 8),
    _INT64: ("q", 8),
    _FLOAT64: ("d", 8),
}
_INT_TYPES = frozenset({_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _UINT64, _INT64})

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_HEADER = struct.Struct("<4sIQQ")

# First bytes of things that are often mistaken for (or downloaded instead of) a GGUF file.
_MAGIC_HINTS: tuple[tuple[bytes, str], ...] = (
    (b"tjgg", "an old GGJT (pre-GGUF llama.cpp) file; convert it to GGUF"),
    (b"lmgg", "an old GGML (pre-GGUF llama.cpp) file; convert it to GGUF"),
    (b"fmgg", "an old GGMF (pre-GGUF llama.cpp) file; convert it to GGUF"),
    (b"FUGG", "a big-endian GGUF file, which is not supported"),
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint?), not GGUF"),
    (b"vers", "probably a Git LFS pointer file; fetch the real file with `git lfs pull`"),
    (b"<!", "an HTML page (a failed download?)"),
    (b"<htm", "an HTML page (a failed download?)"),
    (b"<HTM", "an HTML page (a failed download?)"),
    (b"{", "JSON text, not GGUF"),
)


@dataclass(frozen=True)
class GGUFInfo:
    """What `read_gguf_metadata` found in a GGUF file's header (no tensor data is read)."""

    path: Path
    size_bytes: int
    version: int
    tensor_count: int
    metadata: dict[str, Any]
    """All key/value pairs; arrays longer than 64 items are {"type": "array", "item_type": T, "len": N}."""
    architecture: str | None
    """general.architecture, e.g. 'llama', 'gemma3'."""
    name: str | None
    """general.name."""
    file_type: int | None
    """general.file_type (llama.cpp's LLAMA_FTYPE)."""
    quantization: str | None
    """Readable file_type, e.g. 'Q4_K_M'; None when the file does not say."""
    context_length: int | None
    """{architecture}.context_length: the context the model was trained for."""
    chat_template: str | None
    """tokenizer.chat_template (untrusted Jinja source: render it only through edgeeval.prompting.chat)."""
    has_tokenizer: bool
    """Whether tokenizer.ggml.model is present."""
    alignment: int
    """general.alignment, or the default 32."""
    data_offset: int
    """Byte offset of the tensor data section."""
    bos_token: str | None = None
    """Text of tokenizer.ggml.bos_token_id in tokenizer.ggml.tokens (e.g. '<bos>'), None if absent."""
    eos_token: str | None = None
    """Text of tokenizer.ggml.eos_token_id in tokenizer.ggml.tokens (e.g. '<eos>'), None if absent."""


def _fmt_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


class GGUFParser:
    """One pass over the file: header, key/value pairs, tensor infos. Tracks the offset itself and checks
    every read against the file size first."""

    def __init__(self, path: Path, f: BinaryIO, size: int) -> None:
        self.path = path
        self.f = f
        self.size = size
        self.pos = 0
        self.retained = 0
        self.walked = 0
        self.vocab: tuple[int, int] | None = None  # (offset of the first token string, count)

    # --- low-level reads -------------------------------------------------------------------------

    def fail(self, msg: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {msg}")

    def need(self, n: int, what: str, at: int | None = None) -> None:
        remaining = self.size - self.pos
        if n > remaining:
            raise self.fail(
                f"truncated or corrupt at offset {self.pos if at is None else at}: {what} needs {n} bytes, "
                f"only {remaining} left in the file"
            )

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while we read it
            raise self.fail(f"truncated or corrupt at offset {self.pos}: {what}: short read")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        if n:
            self.f.seek(n, os.SEEK_CUR)
            self.pos += n

    def u32(self, what: str) -> int:
        return _U32.unpack(self.read(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack(self.read(8, what))[0]

    def string(self, what: str, keep: bool = True, max_bytes: int = MAX_STRING_BYTES) -> str | None:
        at = self.pos
        n = self.u64(f"length of {what}")
        self.need(n, f"{what} (declared length {n})", at=at)
        if n > max_bytes:
            raise self.fail(f"{what} at offset {at} is {_fmt_bytes(n)}, over the {_fmt_bytes(max_bytes)} limit")
        if not keep:
            self.skip(n, what)
            return None
        if max_bytes < MAX_STRING_BYTES:  # a short string that is not kept in the metadata (a tensor name)
            return self.read(n, what).decode("utf-8", errors="replace")
        self.retained += n
        if self.retained > MAX_RETAINED_BYTES:
            raise self.fail(
                f"metadata strings at offset {at} exceed {_fmt_bytes(MAX_RETAINED_BYTES)} in total; "
                "the file is corrupt or hostile"
            )
        return self.read(n, what).decode("utf-8", errors="replace")

    # --- structure -------------------------------------------------------------------------------

    def parse(self) -> GGUFInfo:
        version, tensor_count, kv_count = self.header()
        metadata, types = self.key_values(kv_count)
        alignment = self.alignment(metadata, types)
        max_end = self.tensor_infos(tensor_count, alignment)
        data_offset = self.pos
        if tensor_count > 0:
            data_offset = -(-self.pos // alignment) * alignment
            expected = data_offset + max_end
            if expected > self.size:
                raise self.fail(
                    f"truncated: expected at least {expected} bytes, file has {self.size} "
                    "(an incomplete download?)"
                )
        info = self.info(version, tensor_count, metadata, types, alignment, data_offset)
        bos, eos = self.special_tokens(metadata, types)
        return dataclasses.replace(info, bos_token=bos, eos_token=eos)

    def header(self) -> tuple[int, int, int]:
        head = self.f.read(min(self.size, 4))
        if head != GGUF_MAGIC:
            hint = next((h for m, h in _MAGIC_HINTS if head.startswith(m)), None)
            raise self.fail(
                f"is not a GGUF file (magic {head!r}, expected {GGUF_MAGIC!r})" + (f": {hint}" if hint else "")
            )
        self.f.seek(0)
        _, version, tensor_count, kv_count = _HEADER.unpack(self.read(_HEADER.size, "the GGUF header"))
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in SUPPORTED_VERSIONS:
                raise self.fail(f"is a big-endian GGUF file (version {swapped}); only little-endian is supported")
            if version == 1:
                raise self.fail("is GGUF version 1, which is not supported (only 2 and 3); re-convert it")
            raise self.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        if kv_count > MAX_KV_COUNT:
            raise self.fail(f"corrupt header: {kv_count} metadata key/value pairs (limit {MAX_KV_COUNT})")
        if tensor_count > MAX_TENSOR_COUNT:
            raise self.fail(f"corrupt header: {tensor_count} tensors (limit {MAX_TENSOR_COUNT})")
        # Smallest possible entries: a KV is key length (8) + type (4) + a 1-byte value; a tensor info is
        # name length (8) + n_dims (4) + type (4) + offset (8).
        self.need(kv_count * 13 + tensor_count * 24, f"{kv_count} key/value pairs and {tensor_count} tensor infos")
        return version, tensor_count, kv_count

    def key_values(self, kv_count: int) -> tuple[dict[str, Any], dict[str, int]]:
        metadata: dict[str, Any] = {}
        types: dict[str, int] = {}
        for i in range(kv_count):
            at = self.pos
            key = self.string(f"key of metadata pair {i}")
            assert key is not None
            if key in metadata:
                raise self.fail(f"duplicate metadata key {key!r} at offset {at}")
            vtype_at = self.pos
            vtype = self.u32(f"value type of {key!r}")
            if vtype not in _TYPE_NAMES:
                raise self.fail(f"metadata key {key!r} has unknown value type {vtype} at offset {vtype_at}")
            if key == "tokenizer.ggml.tokens" and vtype == _ARRAY:
                self.vocab = (self.pos + 12, -1)  # strings start after item type and count
            metadata[key] = self.value(vtype, key, depth=0, keep=True)
            types[key] = vtype
        return metadata, types

    def value(self, vtype: int, key: str, depth: int, keep: bool) -> Any:
        if vtype == _STRING:
            return self.string(f"string value of {key!r}", keep=keep)
        if vtype == _ARRAY:
            return self.array(key, depth + 1, keep)
        fmt, n = _SCALAR_FORMATS[vtype]
        if not keep:
            self.skip(n, f"value of {key!r}")
            return None
        return struct.unpack("<" + fmt, self.read(n, f"value of {key!r}"))[0]

    def array(self, key: str, depth: int, keep: bool) -> Any:
        at = self.pos
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"metadata key {key!r}: arrays nested more than {MAX_ARRAY_DEPTH} deep at offset {at}")
        itype = self.u32(f"item type of array {key!r}")
        if itype not in _TYPE_NAMES:
            raise self.fail(f"metadata key {key!r} has an array of unknown value type {itype} at offset {at}")
        count = self.u64(f"length of array {key!r}")
        if depth == 1 and key == "tokenizer.ggml.tokens" and self.vocab and self.vocab[0] == self.pos:
            self.vocab = (self.pos, count) if itype == _STRING else None
        if itype in _SCALAR_FORMATS:
            fmt, n = _SCALAR_FORMATS[itype]
            self.need(count * n, f"array {key!r} of {count} {_TYPE_NAMES[itype]}", at=at)
            if keep and count <= MAX_ARRAY_ITEMS_KEPT:
                return list(struct.unpack(f"<{count}{fmt}", self.read(count * n, f"array {key!r}")))
            self.skip(count * n, f"array {key!r}")
        else:
            # strings need >= 8 bytes each (their length), sub-arrays >= 12 (type and length)
            self.need(count * (8 if itype == _STRING else 12), f"array {key!r} of {count} {_TYPE_NAMES[itype]}", at=at)
            self.walked += count
            if self.walked > MAX_VARIABLE_ITEMS:
                raise self.fail(
                    f"metadata key {key!r} at offset {at}: more than {MAX_VARIABLE_ITEMS} strings/arrays in "
                    "metadata arrays; the file is corrupt or hostile"
                )
            kept = keep and count <= MAX_ARRAY_ITEMS_KEPT
            items = [self.value(itype, key, depth, keep=kept) for _ in range(count)] if kept else None
            if not kept:
                if itype == _STRING:
                    self.skip_strings(count, key)
                else:
                    for _ in range(count):
                        self.value(itype, key, depth, keep=False)
            if kept:
                return items
        if not keep:
            return None
        return {"type": "array", "item_type": _TYPE_NAMES[itype], "len": count}

    def skip_strings(self, count: int, key: str) -> None:
        """Skip `count` strings quickly (a vocabulary has 30k-260k of them)."""
        read, u64, size = self.f.read, _U64.unpack, self.size
        pos = self.pos
        try:
            for _ in range(count):
                head = read(8)
                if len(head) != 8:
                    raise EOFError
                n = u64(head)[0]
                pos += 8
                if n > size - pos:
                    raise EOFError
                if n > MAX_STRING_BYTES:
                    self.pos = pos - 8
                    raise self.fail(
                        f"string in array {key!r} at offset {pos - 8} is {_fmt_bytes(n)}, over the "
                        f"{_fmt_bytes(MAX_STRING_BYTES)} limit"
                    )
                if n > 4096:
                    self.f.seek(n, os.SEEK_CUR)
                elif n and len(read(n)) != n:
                    raise EOFError
                pos += n
        except EOFError:
            raise self.fail(f"truncated or corrupt at offset {pos}: inside string array {key!r}") from None
        self.pos = pos

    def special_tokens(self, metadata: dict[str, Any], types: dict[str, int]) -> tuple[str | None, str | None]:
        """Look up the BOS and EOS token texts in the vocabulary (already validated by the first pass)."""
        if not self.vocab or self.vocab[1] < 0:
            return None, None
        start, count = self.vocab
        ids = {}
        for which in ("bos", "eos"):
            key = f"tokenizer.ggml.{which}_token_id"
            if types.get(key) in _INT_TYPES and 0 <= metadata[key] < count:
                ids[which] = metadata[key]
        texts: dict[int, str | None] = {}
        self.f.seek(start)
        self.pos = start
        current = 0
        for index in sorted(set(ids.values())):
            if index > current:
                self.skip_strings(index - current, "tokenizer.ggml.tokens")
            texts[index] = self.string(f"token {index}", max_bytes=1024 * 1024)
            current = index + 1
        return texts.get(ids.get("bos", -1)), texts.get(ids.get("eos", -1))

    def alignment(self, metadata: dict[str, Any], types: dict[str, int]) -> int:
        if "general.alignment" not in metadata:
            return DEFAULT_ALIGNMENT
        value = metadata["general.alignment"]
        if types["general.alignment"] != _UINT32:
            raise self.fail(f"general.alignment has type {_TYPE_NAMES[types['general.alignment']]}, expected uint32")
        if value == 0 or value & (value - 1):
            raise self.fail(f"general.alignment {value} is not a power of 2")
        return value

    def tensor_infos(self, tensor_count: int, alignment: int) -> int:
        """Read the tensor table; return the end of the furthest tensor relative to the data section."""
        max_end = 0
        for i in range(tensor_count):
            at = self.pos
            name = self.string(f"name of tensor {i}", max_bytes=GGML_MAX_NAME - 1)
            n_dims = self.u32(f"n_dims of tensor {name!r}")
            if n_dims > GGML_MAX_DIMS:
                raise self.fail(f"tensor {name!r} at offset {at} has {n_dims} dimensions (limit {GGML_MAX_DIMS})")
            dims = [_I64.unpack(self.read(8, f"dimensions of tensor {name!r}"))[0] for _ in range(n_dims)]
            nelements = 1
            for d in dims:
                if d < 0:
                    raise self.fail(f"tensor {name!r} at offset {at} has a negative dimension {d}")
                nelements *= d
            if nelements >= 2**63:
                raise self.fail(f"tensor {name!r} at offset {at} has too many elements {dims}")
            ttype = self.u32(f"type of tensor {name!r}")
            offset = self.u64(f"data offset of tensor {name!r}")
            if offset % alignment:
                raise self.fail(f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {alignment}")
            end = offset
            if ttype in GGML_TYPES:
                tname, block, type_size = GGML_TYPES[ttype]
                ne0 = dims[0] if dims else 1
                if ne0 % block:
                    raise self.fail(
                        f"tensor {name!r} of type {tname} has {ne0} elements per row, not a multiple of {block}"
                    )
                end = offset + nelements // block * type_size
            max_end = max(max_end, end)
        return max_end

    def info(
        self,
        version: int,
        tensor_count: int,
        metadata: dict[str, Any],
        types: dict[str, int],
        alignment: int,
        data_offset: int,
    ) -> GGUFInfo:
        def get(key: str, kind: str) -> Any:
            if key not in metadata:
                return None
            t = types[key]
            if (kind == "str" and t != _STRING) or (kind == "int" and t not in _INT_TYPES):
                raise self.fail(f"metadata {key!r} has type {_TYPE_NAMES[t]}, expected {'string' if kind == 'str' else 'an integer'}")
            return metadata[key]

        architecture = get("general.architecture", "str")
        file_type = get("general.file_type", "int")
        context_length = get(f"{architecture}.context_length", "int") if architecture else None
        if context_length is not None and context_length < 1:
            # It caps n_ctx: a negative value would reach llama.cpp as a 4-billion-token context.
            raise self.fail(f"metadata '{architecture}.context_length' is {context_length}, expected a positive integer")
        return GGUFInfo(
            path=self.path,
            size_bytes=self.size,
            version=version,
            tensor_count=tensor_count,
            metadata=metadata,
            architecture=architecture,
            name=get("general.name", "str"),
            file_type=file_type,
            quantization=quantization_name(file_type),
            context_length=context_length,
            chat_template=get("tokenizer.chat_template", "str"),
            has_tokenizer="tokenizer.ggml.model" in metadata,
            alignment=alignment,
            data_offset=data_offset,
        )
