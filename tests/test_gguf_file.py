"""edgeeval.config.gguf: a safe GGUF header reader. Valid files are written with the `gguf` package; hostile and
broken ones are built byte by byte."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeeval.config.gguf import read_gguf_metadata, sha256_file
from edgeeval.config.gguf_format import MAX_STRING_BYTES, GGUFInfo
from edgeeval.config.gguf_types import quantization_name
from edgeeval.errors import ModelFileError

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"



def write_tiny_gguf(path: Path, *, template: str | None = TEMPLATE, arch: str = "llama") -> Path:
    """A valid GGUF: metadata of every kind, a 100-token vocabulary, one 4x8 F32 tensor (128 bytes, so the
    file ends exactly where the tensor data ends)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_file_type(15)
    w.add_context_length(2048)
    if template is not None:
        w.add_chat_template(template)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(100)])
    w.add_token_scores([float(i) for i in range(100)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(99)
    w.add_array("test.nested", [[1, 2], [3, 4, 5]])
    w.add_array("test.strings", ["a", "bé"])
    w.add_float64("test.f64", 1.5)
    w.add_bool("test.bool", True)
    w.add_int8("test.i8", -3)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_tensor("w", np.arange(32, dtype=np.float32).reshape(4, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


# --- byte-level builders for broken files -------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def tensor_info(name: str, dims: list[int], ttype: int, offset: int) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<q", d) for d in dims) + struct.pack("<IQ", ttype, offset)


def build(kvs: list[bytes], tensors: list[bytes] = (), data: bytes = b"", alignment: int = 32) -> bytes:
    body = header(len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    if tensors:
        body += b"\0" * (-len(body) % alignment)
    return body + data


ARCH = kv("general.architecture", STRING, s("llama"))


def write(tmp_path: Path, data: bytes, name: str = "x.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def error_of(path: Path) -> str:
    with pytest.raises(ModelFileError) as e:
        read_gguf_metadata(path)
    return str(e.value)


# --- valid files -----------------------------------------------------------------------------------------


def test_reads_tiny_gguf(tiny: Path) -> None:
    info = read_gguf_metadata(tiny)
    assert isinstance(info, GGUFInfo)
    assert info.path == tiny
    assert info.size_bytes == tiny.stat().st_size
    assert info.version == 3
    assert info.tensor_count == 1
    assert info.architecture == "llama"
    assert info.name == "tiny-test"
    assert info.file_type == 15
    assert info.quantization == "Q4_K_M"
    assert info.context_length == 2048
    assert info.chat_template == TEMPLATE
    assert info.has_tokenizer is True
    assert info.alignment == 32
    assert info.data_offset + 128 == info.size_bytes
    assert (info.bos_token, info.eos_token) == ("tok1", "tok99")
    md = info.metadata
    assert md["tokenizer.ggml.tokens"] == {"type": "array", "item_type": "string", "len": 100}
    assert md["tokenizer.ggml.scores"] == {"type": "array", "item_type": "float32", "len": 100}
    assert md["test.nested"] == [[1, 2], [3, 4, 5]]
    assert md["test.strings"] == ["a", "bé"]
    assert md["test.f64"] == 1.5
    assert md["test.bool"] is True
    assert md["test.i8"] == -3
    assert md["test.u64"] == 2**63 + 5


def test_agrees_with_gguf_reader(tiny: Path) -> None:
    assert_agrees_with_gguf_reader(tiny)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 0)), kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2))], ("<b>", "</e>")),
        ([kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 3))], (None, None)),
        ([kv("tokenizer.ggml.bos_token_id", I32, struct.pack("<i", -1))], (None, None)),
        ([kv("tokenizer.ggml.bos_token_id", STRING, s("0"))], (None, None)),
        ([], (None, None)),
    ],
)
def test_special_token_texts(tmp_path: Path, entries: list[bytes], expected: tuple) -> None:
    vocab = kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 3) + s("<b>") + s("mid") + s("</e>"))
    info = read_gguf_metadata(write(tmp_path, build([ARCH, vocab, *entries])))
    assert (info.bos_token, info.eos_token) == expected


def test_special_tokens_need_a_string_vocabulary(tmp_path: Path) -> None:
    vocab = kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", U8, 2) + b"\1\2")
    bos = kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 0))
    info = read_gguf_metadata(write(tmp_path, build([ARCH, vocab, bos])))
    assert info.bos_token is None


def test_accepts_str_path_and_no_template(tmp_path: Path) -> None:
    p = write_tiny_gguf(tmp_path / "nochat.gguf", template=None, arch="gemma3")
    info = read_gguf_metadata(str(p))
    assert info.chat_template is None
    assert info.architecture == "gemma3"
    assert info.context_length == 2048


def test_minimal_file_without_tensors_or_metadata(tmp_path: Path) -> None:
    info = read_gguf_metadata(write(tmp_path, header(0, 0)))
    assert (info.tensor_count, info.metadata, info.architecture, info.quantization) == (0, {}, None, None)
    assert info.has_tokenizer is False and info.context_length is None


def test_version_2_is_accepted(tmp_path: Path) -> None:
    data = bytearray(build([ARCH]))
    data[4:8] = struct.pack("<I", 2)
    assert read_gguf_metadata(write(tmp_path, bytes(data))).version == 2


def test_custom_alignment(tmp_path: Path) -> None:
    kvs = [ARCH, kv("general.alignment", U32, struct.pack("<I", 64))]
    data = build(kvs, [tensor_info("w", [16], 0, 0)], b"\0" * 64, alignment=64)
    info = read_gguf_metadata(write(tmp_path, data))
    assert info.alignment == 64 and info.data_offset % 64 == 0


def test_unknown_tensor_type_skips_the_size_check(tmp_path: Path) -> None:
    data = build([ARCH], [tensor_info("w", [4096, 4096], 999, 0)], b"\0" * 32)
    assert read_gguf_metadata(write(tmp_path, data)).tensor_count == 1


@pytest.mark.parametrize(
    ("file_type", "name"),
    [(0, "F32"), (1, "F16"), (2, "Q4_0"), (3, "Q4_1"), (7, "Q8_0"), (8, "Q5_0"), (9, "Q5_1"), (10, "Q2_K"),
     (11, "Q3_K_S"), (12, "Q3_K_M"), (13, "Q3_K_L"), (14, "Q4_K_S"), (15, "Q4_K_M"), (16, "Q5_K_S"),
     (17, "Q5_K_M"), (18, "Q6_K"), (19, "IQ2_XXS"), (20, "IQ2_XS"), (30, "IQ4_XS"), (32, "BF16"),
     (999, "unknown(999)"), (None, None)],
)
def test_quantization_names(file_type: int | None, name: str | None) -> None:
    assert quantization_name(file_type) == name


# --- truncation and corruption ---------------------------------------------------------------------------


def test_every_truncation_is_a_model_file_error(tiny: Path, tmp_path: Path) -> None:
    data = tiny.read_bytes()
    p = tmp_path / "cut.gguf"
    for cut in range(len(data)):
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            read_gguf_metadata(p)


def test_truncated_tensor_data_message(tiny: Path, tmp_path: Path) -> None:
    data = tiny.read_bytes()
    msg = error_of(write(tmp_path, data[:-1]))
    assert f"truncated: expected at least {len(data)} bytes, file has {len(data) - 1}" in msg


def test_truncated_header_message(tiny: Path, tmp_path: Path) -> None:
    p = write(tmp_path, tiny.read_bytes()[:200])
    msg = error_of(p)
    assert msg.startswith(f"{p}: truncated or corrupt at offset ")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.binary(max_size=400), version3=st.booleans())
def test_random_bytes_after_magic(tmp_path: Path, tail: bytes, version3: bool) -> None:
    p = tmp_path / "random.gguf"
    p.write_bytes(b"GGUF" + (struct.pack("<I", 3) if version3 else b"") + tail)
    try:
        read_gguf_metadata(p)
    except ModelFileError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 1791), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6))
def test_corrupted_valid_file(tiny: Path, tmp_path: Path, edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(tiny.read_bytes())
    for pos, new in edits:
        pos %= len(data)
        data[pos : pos + len(new)] = new[: len(data) - pos]
    p = tmp_path / "mutant.gguf"
    p.write_bytes(bytes(data))
    try:
        info = read_gguf_metadata(p)
    except ModelFileError:
        return
    assert info.size_bytes == len(data)


def test_huge_declared_string_length(tmp_path: Path) -> None:
    data = build([ARCH, s("general.name") + struct.pack("<I", STRING) + struct.pack("<Q", 2**63) + b"abc"])
    msg = error_of(write(tmp_path, data))
    assert "truncated or corrupt at offset" in msg and str(2**63) in msg


def test_huge_declared_key_length(tmp_path: Path) -> None:
    data = header(0, 1) + struct.pack("<Q", 2**64 - 1) + b"general.name"
    assert "truncated or corrupt at offset 24" in error_of(write(tmp_path, data))


@pytest.mark.parametrize(
    ("item_type", "count"), [(U8, 2**62), (U64, 2**61), (STRING, 2**60), (ARRAY, 2**59), (STRING, 10**6)]
)
def test_huge_declared_array_length(tmp_path: Path, item_type: int, count: int) -> None:
    data = build([ARCH, kv("x.arr", ARRAY, struct.pack("<IQ", item_type, count) + b"\0" * 64)])
    assert "truncated or corrupt at offset" in error_of(write(tmp_path, data))


def test_string_over_the_size_cap(tmp_path: Path) -> None:
    """A 65 MiB string in a (sparse) file big enough to hold it: refused by the cap, not read."""
    n = MAX_STRING_BYTES + 1024
    p = write(tmp_path, build([ARCH, s("tokenizer.chat_template") + struct.pack("<IQ", STRING, n)]))
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size + n)
    msg = error_of(p)
    assert "'tokenizer.chat_template'" in msg and "over the 64 MiB limit" in msg


@pytest.mark.parametrize(("n_tensors", "n_kv"), [(0, 2**40), (2**40, 0), (2**64 - 1, 2**64 - 1)])
def test_huge_counts_in_header(tmp_path: Path, n_tensors: int, n_kv: int) -> None:
    assert "corrupt header" in error_of(write(tmp_path, header(n_tensors, n_kv) + b"\0" * 100))


def test_counts_larger_than_the_file(tmp_path: Path) -> None:
    assert "truncated or corrupt at offset 24" in error_of(write(tmp_path, header(0, 1000) + b"\0" * 100))


def test_unknown_value_type_names_key_and_offset(tmp_path: Path) -> None:
    prefix = header(0, 2) + ARCH
    data = prefix + s("evil.key") + struct.pack("<I", 77) + b"\0" * 16
    msg = error_of(write(tmp_path, data))
    assert "'evil.key'" in msg and "unknown value type 77" in msg
    assert f"offset {len(prefix) + 8 + len('evil.key')}" in msg


def test_unknown_array_item_type(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, build([kv("evil.arr", ARRAY, struct.pack("<IQ", 13, 1) + b"\0" * 16)])))
    assert "'evil.arr'" in msg and "unknown value type 13" in msg


def test_nested_arrays_and_depth_limit(tmp_path: Path) -> None:
    def nest(depth: int) -> bytes:
        inner = struct.pack("<IQ", U8, 2) + b"\x01\x02"
        for _ in range(depth - 1):
            inner = struct.pack("<IQ", ARRAY, 1) + inner
        return inner

    info = read_gguf_metadata(write(tmp_path, build([kv("ok", ARRAY, nest(8))]), "ok.gguf"))
    value = info.metadata["ok"]
    for _ in range(7):
        value = value[0]
    assert value == [1, 2]
    assert "nested more than 8 deep" in error_of(write(tmp_path, build([kv("deep", ARRAY, nest(9))])))


def test_deeply_nested_arrays_do_not_recurse_forever(tmp_path: Path) -> None:
    payload = struct.pack("<IQ", ARRAY, 1) * 100_000 + b"\0" * 16
    assert "nested more than" in error_of(write(tmp_path, build([kv("deep", ARRAY, payload)])))


def test_duplicate_key(tmp_path: Path) -> None:
    assert "duplicate metadata key 'general.architecture'" in error_of(write(tmp_path, build([ARCH, ARCH])))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (kv("general.alignment", U32, struct.pack("<I", 48)), "not a power of 2"),
        (kv("general.alignment", U32, struct.pack("<I", 0)), "not a power of 2"),
        (kv("general.alignment", U64, struct.pack("<Q", 32)), "expected uint32"),
        (kv("general.architecture", U32, struct.pack("<I", 1)), "'general.architecture' has type uint32"),
        (kv("general.file_type", STRING, s("Q4_K_M")), "'general.file_type' has type string"),
        (kv("tokenizer.chat_template", U8, b"\1"), "'tokenizer.chat_template' has type uint8"),
    ],
)
def test_bad_special_keys(tmp_path: Path, entry: bytes, message: str) -> None:
    assert message in error_of(write(tmp_path, build([entry])))


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (tensor_info("w", [1, 1, 1, 1, 1], 0, 0), "has 5 dimensions"),
        (tensor_info("w", [-1], 0, 0), "negative dimension"),
        (tensor_info("w", [2**62, 2**62], 0, 0), "too many elements"),
        (tensor_info("w", [8], 0, 4), "not a multiple of the alignment"),
        (tensor_info("w", [33], 2, 0), "not a multiple of 32"),
        (tensor_info("w" * 64, [8], 0, 0), "over the 63 bytes limit"),
        (tensor_info("w", [2**40], 0, 0), "truncated: expected at least"),
    ],
)
def test_bad_tensor_infos(tmp_path: Path, info: bytes, message: str) -> None:
    assert message in error_of(write(tmp_path, build([ARCH], [info], b"\0" * 64)))


def test_tensor_beyond_end_of_file(tmp_path: Path) -> None:
    data = build([ARCH], [tensor_info("a", [8], 0, 0), tensor_info("b", [4096], 1, 32)], b"\0" * 64)
    msg = error_of(write(tmp_path, data))
    data_offset = len(data) - 64
    assert f"truncated: expected at least {data_offset + 32 + 8192} bytes, file has {len(data)}" in msg


# --- not GGUF at all ---------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    p = write(tmp_path, b"", "empty.gguf")
    msg = error_of(p)
    assert str(p) in msg and "empty (0 bytes)" in msg


def test_not_a_gguf_file(tmp_path: Path) -> None:
    p = write(tmp_path, b"hello world, not a model", "model.gguf")
    msg = error_of(p)
    assert msg == f"{p}: is not a GGUF file (magic b'hell', expected b'GGUF')"


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html>", "HTML page"),
        (b"tjgg" + b"\0" * 32, "GGJT"),
        (b"PK\x03\x04" + b"\0" * 32, "zip archive"),
        (b"GG", "magic b'GG'"),
    ],
)
def test_not_gguf_hints(tmp_path: Path, content: bytes, hint: str) -> None:
    assert hint in error_of(write(tmp_path, content))


@pytest.mark.parametrize(
    ("version", "message"),
    [(1, "version 1, which is not supported"), (4, "unsupported GGUF version 4"), (0x03000000, "big-endian")],
)
def test_unsupported_versions(tmp_path: Path, version: int, message: str) -> None:
    assert message in error_of(write(tmp_path, header(0, 0, version=version)))


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.gguf"
    assert error_of(p) == f"{p}: file not found"


def test_directory(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: is a directory, not a GGUF file"


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    p = tmp_path / "fifo.gguf"
    os.mkfifo(p)
    assert error_of(p) == f"{p}: is not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files whatever their permissions")
def test_permission_denied(tiny: Path, tmp_path: Path) -> None:
    p = write(tmp_path, tiny.read_bytes(), "locked.gguf")
    p.chmod(0)
    try:
        assert "permission denied" in error_of(p)
    finally:
        p.chmod(0o644)


def test_permission_denied_on_directory(tiny: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read files whatever their permissions")
    d = tmp_path / "locked"
    d.mkdir()
    p = write(d, tiny.read_bytes(), "m.gguf")
    d.chmod(0)
    try:
        assert "permission denied" in error_of(p)
    finally:
        d.chmod(0o755)


# --- sha256 ---------------------------------------------------------------------------------------------------


def test_sha256_file(tiny: Path) -> None:
    expected = hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert sha256_file(tiny) == expected
    assert sha256_file(str(tiny), chunk=7) == expected


def test_sha256_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="file not found"):
        sha256_file(tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match="is a directory"):
        sha256_file(tmp_path)


# --- the demo models' files (conftest's real_models: skipped when absent, an error in CI) ------------------------------


def flatten(value: list) -> list:
    return [x for item in value for x in (flatten(item) if isinstance(item, list) else [item])]


def assert_agrees_with_gguf_reader(path: Path) -> None:
    info = read_gguf_metadata(path)
    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(info.metadata) == list(fields)
    assert info.tensor_count == len(reader.tensors)
    assert info.data_offset == reader.data_offset
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    for which in ("bos", "eos"):
        token_id = reader.fields.get(f"tokenizer.ggml.{which}_token_id")
        if tokens is not None and token_id is not None:
            assert getattr(info, f"{which}_token") == tokens.contents(int(token_id.contents()))
    for key, field in fields.items():
        ours = info.metadata[key]
        if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > 64:
            assert ours == {"type": "array", "item_type": field.types[-1].name.lower(), "len": len(field.data)}, key
        elif field.types[-1] == gguf.GGUFValueType.FLOAT32:
            assert np.allclose(np.float32(ours), np.float32(field.contents())), key
        elif field.types[:2] == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.ARRAY]:
            assert flatten(ours) == field.contents(), key  # GGUFReader flattens arrays of arrays
        else:
            assert ours == field.contents(), key


@pytest.mark.real_model  # reading the 49k-token vocabulary with GGUFReader takes seconds
def test_real_smollm2(real_models) -> None:
    info = read_gguf_metadata(real_models["smollm2"])
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.has_tokenizer
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert info.context_length == 8192
    assert info.metadata["tokenizer.ggml.tokens"]["len"] == 49152
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert_agrees_with_gguf_reader(real_models["smollm2"])


@pytest.mark.real_model  # GGUFReader on the 262k-token vocabulary: about 20 s of CPU
def test_real_gemma3(real_models) -> None:
    info = read_gguf_metadata(real_models["gemma"])
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.has_tokenizer
    assert (info.bos_token, info.eos_token) == ("<bos>", "<eos>")
    assert_agrees_with_gguf_reader(real_models["gemma"])
