"""The GGUF reader's tensor-size table against the libggml that llama-cpp-python ships.

The truncation check multiplies each tensor's element count by its type's
block size and bytes per block. A llama.cpp upgrade that adds a type, or
changes one, must fail here rather than make the daemon misjudge a model file
as truncated (or a truncated one as whole). The sizes come from the linked
library itself, through ctypes: `ggml_blck_size` and `ggml_type_size` for every
type id below `GGML_TYPE_COUNT`.
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import re
from pathlib import Path

import pytest

from cortexd.inference.gguf import _TENSOR_TYPES


def _package_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations, "llama_cpp is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    """libggml-base from inside the llama_cpp package: the one the daemon's llama.cpp links."""
    libs = sorted((_package_dir() / "lib").glob("libggml-base.so*"))
    assert libs, f"no libggml-base in {_package_dir() / 'lib'}"
    lib = ctypes.CDLL(str(libs[0]))
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_type_name.restype = ctypes.c_char_p
    return lib


@pytest.fixture(scope="module")
def declared_types() -> dict[str, int]:
    """The binding's `GGML_TYPE_*` constants, read from its source without importing it.

    libggml has no bounds check on a type id and exports no count, so the
    number of types comes from the binding built for it; the names are checked
    against the library below, so a binding that fell behind fails too.
    """
    source = (_package_dir() / "llama_cpp.py").read_text()
    found: dict[str, int] = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and re.fullmatch(r"GGML_TYPE_\w+", node.targets[0].id)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, int)
        ):
            found[node.targets[0].id] = node.value.value
    assert "GGML_TYPE_COUNT" in found, "the binding declares no GGML_TYPE_COUNT"
    return found


def test_the_binding_names_each_type_as_the_library_does(
    ggml: ctypes.CDLL, declared_types: dict[str, int]
) -> None:
    count = declared_types["GGML_TYPE_COUNT"]
    for name, type_id in declared_types.items():
        if name == "GGML_TYPE_COUNT":
            continue
        assert 0 <= type_id < count, f"{name} = {type_id} is past GGML_TYPE_COUNT {count}"
        library_name = ggml.ggml_type_name(type_id).decode()
        assert library_name.lower() == name.removeprefix("GGML_TYPE_").lower(), (
            f"type {type_id}: the binding says {name}, libggml says {library_name}"
        )


def test_every_type_has_the_block_and_byte_size_libggml_gives(
    ggml: ctypes.CDLL, declared_types: dict[str, int]
) -> None:
    count = declared_types["GGML_TYPE_COUNT"]
    expected: dict[int, tuple[int, int]] = {}
    retired: list[int] = []
    for type_id in range(count):
        block = ggml.ggml_blck_size(type_id)
        if block == 0:
            # An id ggml retired ("DEPRECATED", "... REMOVED"): no file may use it.
            retired.append(type_id)
            continue
        expected[type_id] = (block, ggml.ggml_type_size(type_id))
    assert expected, "libggml reported no tensor type at all"
    missing = {t: size for t, size in expected.items() if t not in _TENSOR_TYPES}
    differing = {
        t: {"table": _TENSOR_TYPES[t], "libggml": size}
        for t, size in expected.items()
        if t in _TENSOR_TYPES and _TENSOR_TYPES[t] != size
    }
    unknown = sorted(set(_TENSOR_TYPES) - set(expected))
    assert (missing, differing, unknown) == ({}, {}, []), (
        f"GGUF tensor-size table out of step with libggml: missing {missing}, "
        f"differing {differing}, not types in libggml {unknown} (retired ids: {retired})"
    )
