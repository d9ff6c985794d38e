"""Cut a BERT encoder GGUF to its first N layers, so that llama.cpp's last layer is the layer bert-score reads.

llama.cpp gives an encoder's last layer; bert-score reads a model-specific layer (SciBERT: 8 of 12,
Bio_ClinicalBERT: the BERT-base default, 9 of 12; see bert-score's model2layers). A BERT layer's output is already
normalised (post-LN) and nothing follows the layers in llama.cpp's BERT graph but pooling, so the first N layers
of the file give exactly bert-score's layer N.

Run it where you converted the model (it needs the `gguf` package that ships with llama.cpp's converter):

    python scripts/encoder_layers.py scibert-f32.gguf scibert-L8-f32.gguf --layers 8

Measured on all-MiniLM-L6-v2 cut to 4 of its 6 layers: edgeeval's BERTScore within 1.2e-4 of bert-score's at
num_layers=4 on all 50 pairs of benchmarks/bertscore (see its README)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--layers", type=int, required=True, help="how many layers to keep, from the first")
    args = parser.parse_args()
    try:
        import gguf
    except ImportError:
        sys.exit("this script needs the gguf package (pip install gguf, or llama.cpp's gguf-py)")
    if args.target.exists():
        sys.exit(f"{args.target}: exists already; choose a new name")

    reader = gguf.GGUFReader(args.source)
    arch = _string(reader.fields["general.architecture"])
    if arch != "bert":
        sys.exit(f"{args.source}: architecture {arch!r}; this cut is checked for BERT encoders only")
    count_key = f"{arch}.block_count"
    total = int(reader.fields[count_key].parts[reader.fields[count_key].data[0]][0])
    if not 1 <= args.layers <= total:
        sys.exit(f"{args.source}: has {total} layers; --layers must be 1 to {total}")

    writer = gguf.GGUFWriter(args.target, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == count_key:
            writer.add_uint32(name, args.layers)
        else:
            _copy_field(writer, gguf, name, field)
    kept = 0
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= args.layers:
            continue
        writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
        kept += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{args.target}: {args.layers} of {total} layers, {kept} of {len(reader.tensors)} tensors")
    return 0


def _string(field) -> str:  # type: ignore[no-untyped-def]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _copy_field(writer, gguf, name: str, field) -> None:  # type: ignore[no-untyped-def]
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            writer.add_array(name, [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data])
        else:
            writer.add_array(name, [field.parts[i].tolist()[0] for i in field.data])
    elif kind == gguf.GGUFValueType.STRING:
        writer.add_string(name, _string(field))
    else:
        writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], kind)


if __name__ == "__main__":
    raise SystemExit(main())
