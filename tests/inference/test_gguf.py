"""Model file checks: missing, not GGUF, truncated, and KV cache sizing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cortexd.inference.gguf import ModelFileError, check_context, check_fits, inspect

SMOLLM2_KV_BYTES_PER_TOKEN = 23040  # 30 layers x 3 KV heads x (64 + 64) x 2 bytes


def test_the_real_model_is_read(model_path: str) -> None:
    info = inspect(model_path)
    assert info.size_bytes == os.path.getsize(model_path)
    assert info.architecture == "llama"
    assert info.kv_bytes_per_token == SMOLLM2_KV_BYTES_PER_TOKEN
    assert info.context_length == 8192


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        inspect(str(tmp_path / "nope.gguf"))


def test_a_text_file_is_not_gguf_and_the_error_quotes_none_of_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("just some notes\n")
    with pytest.raises(ModelFileError, match="not a GGUF model") as info:
        inspect(str(path))
    assert "just" not in str(info.value)


@pytest.mark.parametrize("keep", [16, 4096, 1 << 20, 50_000_000])
def test_a_truncated_copy_is_reported_as_truncated(
    model_path: str, tmp_path: Path, keep: int
) -> None:
    path = tmp_path / "cut.gguf"
    with open(model_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(keep))
    with pytest.raises(ModelFileError, match="truncated"):
        inspect(str(path))


def test_a_whole_copy_passes(model_path: str, tmp_path: Path) -> None:
    path = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, path)
    assert inspect(str(path)).name == inspect(model_path).name


def test_a_context_too_large_for_memory_is_refused(model_path: str) -> None:
    info = inspect(model_path)
    check_fits(info, 2048, use_mmap=True)
    huge = 1 << 40  # ~25 PB of KV cache
    with pytest.raises(ModelFileError, match=f"n_ctx {huge} needs about"):
        check_fits(info, huge, use_mmap=True)


def test_a_memory_limit_below_the_model_is_refused(model_path: str) -> None:
    info = inspect(model_path)
    with pytest.raises(ModelFileError, match="the runner's memory limit is 64 MiB"):
        check_fits(info, 2048, use_mmap=True, memory_limit=64 * 1024 * 1024)
    check_fits(info, 2048, use_mmap=True, memory_limit=1 << 30)


def test_a_context_past_training_needs_to_be_allowed(model_path: str) -> None:
    info = inspect(model_path)
    check_context(info, 8192, allow_beyond_train=False)
    with pytest.raises(ModelFileError, match="beyond the 8192 tokens"):
        check_context(info, 8193, allow_beyond_train=False)
    check_context(info, 8193, allow_beyond_train=True)
