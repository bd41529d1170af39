"""Copies of a real GGUF model with one header field changed, for failure tests.

Reads the header on its own (not through `cortexd.inference.gguf`, so the
daemon's reader is not used to test itself), finds where one metadata
integer or one tensor-header field sits, and writes a copy of the file with
that field rewritten in place. Everything else, tensors included, stays
byte for byte as in the real model.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Field:
    """Where a value sits in the file and how it is packed."""

    offset: int
    fmt: str


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[Field, ...]
    type: Field
    offset: Field


@dataclass(frozen=True)
class Layout:
    metadata: dict[str, Field]
    tensors: list[Tensor]


def read_layout(path: str | Path) -> Layout:
    """Where each scalar metadata value and each tensor-header field of `path` sits."""
    data = Path(path).read_bytes()
    pos = 4 + 4  # magic, version
    n_tensors, n_kv = struct.unpack_from("<QQ", data, pos)
    pos += 16

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", data, at)
        return data[at + 8 : at + 8 + n].decode(), at + 8 + n

    def skip(kind: int, at: int) -> int:
        if kind in _SCALARS:
            return at + struct.calcsize(_SCALARS[kind])
        if kind == _STRING:
            return string(at)[1]
        assert kind == _ARRAY, kind
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item in _SCALARS:
            return at + struct.calcsize(_SCALARS[item]) * count
        for _ in range(count):
            at = skip(item, at)
        return at

    metadata: dict[str, Field] = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if kind in _SCALARS:
            metadata[key] = Field(pos, _SCALARS[kind])
        pos = skip(kind, pos)
    tensors = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        dims = tuple(Field(pos + 8 * i, "<Q") for i in range(n_dims))
        pos += 8 * n_dims
        tensors.append(Tensor(name, dims, Field(pos, "<I"), Field(pos + 4, "<Q")))
        pos += 12
    return Layout(metadata, tensors)


def read(path: str | Path, field: Field) -> int:
    with open(path, "rb") as fh:
        fh.seek(field.offset)
        (value,) = struct.unpack(field.fmt, fh.read(struct.calcsize(field.fmt)))
    return int(value)


def rewrite(src: str | Path, dst: str | Path, field: Field, value: int) -> None:
    """Copy `src` to `dst` with `field` set to `value`."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(field.offset)
        fh.write(struct.pack(field.fmt, value))


# name -> what it changes; each is one field of the real SmolLM2 file.
MUTATIONS = {
    "block_count": "llama.block_count is 1000 (the model has 30 blocks)",
    "head_count_zero": "llama.attention.head_count is 0",
    "embedding_length": "llama.embedding_length is 1000 (the tensors are 576 wide)",
    "tensor_type": "the first tensor's ggml type is 1000 (no such type)",
    "tensor_dimension": "a tensor's first dimension is 2^40",
    "misaligned_offset": "the second tensor's data offset is off by one byte",
    "token_count": "token_embd.weight holds 50000 token rows (the vocabulary has 49152)",
}


def mutate(src: str | Path, dst: str | Path, name: str) -> None:
    """Write a copy of `src` to `dst` with the mutation `name` applied."""
    layout = read_layout(src)
    meta, tensors = layout.metadata, layout.tensors
    if name == "block_count":
        rewrite(src, dst, meta["llama.block_count"], 1000)
    elif name == "head_count_zero":
        rewrite(src, dst, meta["llama.attention.head_count"], 0)
    elif name == "embedding_length":
        rewrite(src, dst, meta["llama.embedding_length"], 1000)
    elif name == "tensor_type":
        rewrite(src, dst, tensors[0].type, 1000)
    elif name == "tensor_dimension":
        rewrite(src, dst, tensors[1].dims[0], 1 << 40)
    elif name == "misaligned_offset":
        rewrite(src, dst, tensors[1].offset, read(src, tensors[1].offset) + 1)
    elif name == "token_count":
        embeddings = next(t for t in tensors if t.name == "token_embd.weight")
        rewrite(src, dst, embeddings.dims[1], 50000)
    else:
        raise KeyError(name)
