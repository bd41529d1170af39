"""Which model files the daemon opens, and the checks made before a runner sees one.

A model named by `model.load` comes from an admin, who is not root: it must
resolve to a file inside `inference.model_dirs`, decided on the resolved
path (so no symlink leads out) and opened with `O_NOFOLLOW` (so the last
component cannot be swapped for a link after the check). The refusal is the
same whether or not the file exists. The path in `inference.model_path` or
`cortexd --model` is root's own choice and is opened the same way, without
the directory check.

The open descriptor is what the runner loads (`/proc/self/fd/N`), so the
file checked here is the file loaded, whatever happens to the path later.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cortexd.config.schema import Config, InferenceConfig
from cortexd.protocol import PermissionDenied

if TYPE_CHECKING:
    from cortexd.inference.gguf import ModelInfo

SYSTEM_MODEL_DIR = "/usr/share/cortex/models"
MiB = 1024 * 1024
# The runner's own address space before the model: the interpreter, numpy,
# llama.cpp, thread stacks and the compute buffers llama.cpp reserves
# (measured: about 520 MiB for SmolLM2 at n_ctx 2048; the rest of the
# default's margin scales with the model).
RUNNER_BASE_BYTES = 1024 * MiB

Source = Literal["config", "load"]


def model_dirs(config: Config) -> tuple[str, ...]:
    """`inference.model_dirs`, or by default `<state_dir>/models` and /usr/share/cortex/models."""
    dirs = config.inference.model_dirs
    if dirs:
        return tuple(dirs)
    return (os.path.join(config.state_dir, "models"), SYSTEM_MODEL_DIR)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model the engine is asked to serve: its path and who chose it."""

    path: str
    source: Source


@dataclass(eq=False, slots=True)
class OpenModel:
    """A checked model file, open; the caller closes `fd` once a runner holds it."""

    ref: ModelRef
    fd: int
    info: ModelInfo
    memory_limit: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def resolve(path: str) -> str:
    """`~` expanded, absolute and with every symlink resolved."""
    return os.path.realpath(os.path.expanduser(path))


def check_allowed(path: str, dirs: Sequence[str]) -> str:
    """The resolved `path` if it lies inside one of `dirs`.

    Raises:
        PermissionDenied: it does not (the same answer whether or not it exists).
    """
    resolved = resolve(path)
    for directory in dirs:
        base = resolve(directory)
        if os.path.commonpath([resolved, base]) == base and resolved != base:
            return resolved
    raise PermissionDenied(
        "model.load only loads files inside the model directories (inference.model_dirs: "
        + ", ".join(dirs)
        + ")",
        path=path,
        model_dirs=list(dirs),
    )


def open_model(ref: ModelRef, config: InferenceConfig) -> OpenModel:
    """Open and check `ref.path` (a resolved path) for a runner.

    Blocking (file I/O): run it in a thread.

    Raises:
        ModelFileError: missing, not a regular file, unreadable, not GGUF,
            truncated, too large for memory or the memory limit, or an n_ctx
            beyond the model's training context.
    """
    # The GGUF reader loads with the first model opened (in the caller's thread).
    from cortexd.inference.gguf import ModelFileError, check_context, check_fits, inspect_fd

    path = ref.path
    try:
        # O_NONBLOCK: a FIFO must not hang the open; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ModelFileError(f"no such file: {path}") from None
    except PermissionError:
        raise ModelFileError(f"permission denied reading {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelFileError(f"not a regular file: {path}")
        try:
            info = inspect_fd(fd, path)
        except OSError as exc:
            raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        check_context(info, config.n_ctx, config.allow_ctx_beyond_train)
        limit = memory_limit(config, info.size_bytes, info.kv_bytes(config.n_ctx))
        check_fits(info, config.n_ctx, config.use_mmap, limit)
    except BaseException:
        os.close(fd)
        raise
    return OpenModel(ref, fd, info, limit)


def memory_limit(config: InferenceConfig, size_bytes: int, kv_bytes: int | None) -> int:
    """The runner's address-space limit in bytes: `inference.memory_limit_mb`, or
    by default room for the runner itself, the model and twice its KV cache."""
    if config.memory_limit_mb > 0:
        return config.memory_limit_mb * MiB
    return RUNNER_BASE_BYTES + size_bytes + 2 * (kv_bytes or 0)
