"""Check a GGUF file before llama.cpp sees it, and size its KV cache.

llama.cpp answers every bad file with the same "failed to load model"; an
operator needs to know whether the path is wrong, the file is something else,
or the download stopped half-way. Reading the header ourselves (through mmap,
so the tokenizer arrays cost no copies) gives those answers, plus the shapes
needed to tell whether `n_ctx` fits in memory before llama.cpp tries to
allocate it.
"""

from __future__ import annotations

import mmap
import os
import resource
import struct
from dataclasses import dataclass
from typing import Any

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
KV_BYTES_PER_ELEMENT = 2  # llama.cpp keeps the KV cache in f16 unless told otherwise

# GGUF metadata value types: id -> struct format for scalars.
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING = 8
_ARRAY = 9

# ggml tensor types: id -> (elements per block, bytes per block), as the linked
# libggml's ggml_blck_size/ggml_type_size give them (tests/inference/
# test_gguf_types.py holds the two together). Ids ggml retired are left out.
# Unknown types only weaken the truncation check to "the last tensor starts
# inside the file".
_TENSOR_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
    40: (64, 36),
    41: (128, 18),
    42: (64, 18),
}


class ModelFileError(Exception):
    """The model file cannot be used; the message says why in an operator's words."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the header says about a model."""

    path: str
    size_bytes: int
    name: str
    architecture: str
    context_length: int | None
    kv_bytes_per_token: int | None

    def kv_bytes(self, n_ctx: int) -> int | None:
        """Bytes of KV cache for `n_ctx` tokens, if the header told us the shapes."""
        if self.kv_bytes_per_token is None:
            return None
        return self.kv_bytes_per_token * n_ctx


class _Reader:
    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise ModelFileError(
                f"the file is truncated: its header needs more than its {self.size} bytes"
            )

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        self.need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self.need(n)
        self.pos += n

    def value(self, kind: int, keep: bool) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            if keep:
                return self.string()
            self.skip_string()
            return None
        if kind == _ARRAY:
            item_kind = self.unpack("<I")
            count = self.unpack("<Q")
            if item_kind in _SCALARS:
                n = struct.calcsize(_SCALARS[item_kind]) * count
                self.need(n)
                self.pos += n
                return None
            for _ in range(count):
                self.value(item_kind, keep=False)
            return None
        raise ModelFileError(f"the header has an unknown value type {kind} at byte {self.pos}")


def inspect(path: str) -> ModelInfo:
    """Read and check the GGUF header and tensor table of `path`.

    Raises:
        ModelFileError: the file is missing, unreadable, not GGUF, or truncated.
    """
    if not os.path.exists(path):
        raise ModelFileError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise ModelFileError(f"not a regular file: {path}")
    try:
        with open(path, "rb") as fh:
            return inspect_fd(fh.fileno(), path)
    except PermissionError:
        raise ModelFileError(f"permission denied reading {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def inspect_fd(fd: int, name: str) -> ModelInfo:
    """`inspect` for a file already open as `fd`; `name` is the path it was opened by.

    A message never quotes the file's bytes: the file may not be a model at
    all, and what it holds is not the caller's to read.

    Raises:
        ModelFileError: not GGUF, or truncated.
        OSError: the file cannot be read.
    """
    size = os.fstat(fd).st_size
    if os.pread(fd, len(GGUF_MAGIC), 0) != GGUF_MAGIC:
        raise ModelFileError("not a GGUF model: the file does not start with the GGUF signature")
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
        return _parse(name, buf, size)


def _parse(path: str, buf: mmap.mmap, size: int) -> ModelInfo:
    r = _Reader(buf, size)
    r.pos = 4
    version = r.unpack("<I")
    if version not in (2, 3):
        raise ModelFileError(f"unsupported GGUF version {version}")
    n_tensors = r.unpack("<Q")
    n_kv = r.unpack("<Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        kind = r.unpack("<I")
        # Only small scalars and short strings are kept; the tokenizer's arrays are skipped.
        meta[key] = r.value(kind, keep=not key.startswith("tokenizer."))
    data_end = 0
    for _ in range(n_tensors):
        r.skip_string()
        n_dims = r.unpack("<I")
        elements = 1
        for _ in range(n_dims):
            elements *= r.unpack("<Q")
        ggml_type = r.unpack("<I")
        offset = r.unpack("<Q")
        block, block_bytes = _TENSOR_TYPES.get(ggml_type, (1, 0))
        data_end = max(data_end, offset + elements // block * block_bytes)
    alignment = int(meta.get("general.alignment") or DEFAULT_ALIGNMENT)
    data_start = (r.pos + alignment - 1) // alignment * alignment
    if data_start + data_end > size:
        raise ModelFileError(
            f"the file is truncated: it is {size} bytes but its tensors need "
            f"{data_start + data_end} (an interrupted download?)"
        )
    arch = str(meta.get("general.architecture") or "unknown")
    return ModelInfo(
        path=path,
        size_bytes=size,
        name=str(meta.get("general.name") or os.path.basename(path)),
        architecture=arch,
        context_length=_int(meta.get(f"{arch}.context_length")),
        kv_bytes_per_token=_kv_per_token(meta, arch),
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _kv_per_token(meta: dict[str, Any], arch: str) -> int | None:
    layers = _int(meta.get(f"{arch}.block_count"))
    embd = _int(meta.get(f"{arch}.embedding_length"))
    heads = _int(meta.get(f"{arch}.attention.head_count"))
    if not layers or not embd or not heads:
        return None
    kv_heads = _int(meta.get(f"{arch}.attention.head_count_kv")) or heads
    key_len = _int(meta.get(f"{arch}.attention.key_length")) or embd // heads
    value_len = _int(meta.get(f"{arch}.attention.value_length")) or embd // heads
    return layers * kv_heads * (key_len + value_len) * KV_BYTES_PER_ELEMENT


def available_memory() -> int | None:
    """Bytes this process can still allocate.

    The least of MemAvailable, the cgroup's headroom (the unit's MemoryMax) and
    the address-space limit's headroom (LimitAS / `prlimit --as`).
    """
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        pass
    found.extend(_cgroup_headroom())
    found.extend(_address_space_headroom())
    return min(found) if found else None


def _address_space_headroom() -> list[int]:
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return []
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return []
    return [max(0, soft - size)]


def _cgroup_headroom() -> list[int]:
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            line = next((ln for ln in fh if ln.startswith("0::")), None)
        if line is None:
            return []
        base = os.path.join("/sys/fs/cgroup", line.strip()[3:].lstrip("/"))
        with open(os.path.join(base, "memory.max"), encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit == "max":
            return []
        with open(os.path.join(base, "memory.current"), encoding="ascii") as fh:
            current = int(fh.read().strip())
        return [max(0, int(limit) - current)]
    except (OSError, ValueError):
        return []


def check_fits(
    info: ModelInfo, n_ctx: int, use_mmap: bool, memory_limit: int | None = None
) -> None:
    """Refuse an `n_ctx` whose KV cache cannot fit in the memory left, or a model
    that cannot fit in the runner's address-space limit (`memory_limit` bytes).

    Raises:
        ModelFileError: naming the sizes and the setting to change.
    """
    kv = info.kv_bytes(n_ctx)
    if memory_limit and info.size_bytes + (kv or 0) > memory_limit:
        kv_part = f" and {_mib(kv)} MiB of KV cache for n_ctx {n_ctx}" if kv else ""
        raise ModelFileError(
            f"the model needs at least {_mib(info.size_bytes + (kv or 0))} MiB of address "
            f"space (its {_mib(info.size_bytes)} MiB file{kv_part}) but the runner's memory "
            f"limit is {_mib(memory_limit)} MiB; raise inference.memory_limit_mb or lower "
            "inference.n_ctx"
        )
    available = available_memory()
    if kv is None or available is None:
        return
    needed = kv + (0 if use_mmap else info.size_bytes)
    if needed > available:
        raise ModelFileError(
            f"n_ctx {n_ctx} needs about {_mib(needed)} MiB "
            f"({_mib(kv)} MiB of KV cache) but only {_mib(available)} MiB of memory is "
            "available; lower inference.n_ctx"
        )


def check_context(info: ModelInfo, n_ctx: int, allow_beyond_train: bool) -> None:
    """Refuse an `n_ctx` past the context the model was trained for, unless allowed.

    Raises:
        ModelFileError: naming both sizes and the two ways out.
    """
    trained = info.context_length
    if allow_beyond_train or not trained or n_ctx <= trained:
        return
    raise ModelFileError(
        f"inference.n_ctx {n_ctx} is beyond the {trained} tokens {info.name} was trained "
        f"for; lower inference.n_ctx to {trained} or less, or set "
        "inference.allow_ctx_beyond_train: true to run it anyway (answers degrade past "
        f"{trained} tokens)"
    )


def _mib(n: int) -> int:
    return n // (1024 * 1024)
