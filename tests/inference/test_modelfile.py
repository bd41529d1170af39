"""Which files `model.load` may open, decided on the resolved path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cortexd.config.schema import Config, InferenceConfig
from cortexd.inference.gguf import ModelFileError
from cortexd.inference.modelfile import (
    SYSTEM_MODEL_DIR,
    ModelRef,
    check_allowed,
    model_dirs,
    open_model,
)
from cortexd.protocol import PermissionDenied
from tests.inference.helpers import write_tiny_gguf


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_tiny_gguf(str(tmp_path / "models" / "ok.gguf"), "ok")
    write_tiny_gguf(str(tmp_path / "elsewhere" / "other.gguf"), "other")
    return tmp_path


def test_the_default_model_dirs_are_the_state_dir_and_the_system_dir() -> None:
    config = Config(state_dir="/var/lib/x")
    assert model_dirs(config) == ("/var/lib/x/models", SYSTEM_MODEL_DIR)
    chosen = Config(inference=InferenceConfig(model_dirs=("/srv/models",)))
    assert model_dirs(chosen) == ("/srv/models",)


def test_a_file_inside_is_allowed_by_its_resolved_path(tree: Path) -> None:
    dirs = [str(tree / "models")]
    assert check_allowed(str(tree / "models" / "ok.gguf"), dirs) == str(tree / "models" / "ok.gguf")
    dotted = str(tree / "elsewhere" / ".." / "models" / "ok.gguf")
    assert check_allowed(dotted, dirs) == str(tree / "models" / "ok.gguf")
    # A link inside that points to a file inside resolves to that file.
    (tree / "models" / "alias.gguf").symlink_to(tree / "models" / "ok.gguf")
    assert check_allowed(str(tree / "models" / "alias.gguf"), dirs).endswith("ok.gguf")


@pytest.mark.parametrize(
    "path",
    [
        "elsewhere/other.gguf",
        "models/../elsewhere/other.gguf",
        "models/link-out.gguf",
        "elsewhere/missing.gguf",
        "models",
        "modelsX/other.gguf",
    ],
)
def test_a_path_that_resolves_outside_is_refused_the_same_way(tree: Path, path: str) -> None:
    (tree / "models" / "link-out.gguf").symlink_to(tree / "elsewhere" / "other.gguf")
    (tree / "modelsX").mkdir()
    with pytest.raises(PermissionDenied) as info:
        check_allowed(str(tree / path), [str(tree / "models")])
    assert info.value.message == (
        f"model.load only loads files inside the model directories "
        f"(inference.model_dirs: {tree / 'models'})"
    )


def test_a_symlink_swapped_in_after_the_check_is_not_followed(tree: Path) -> None:
    # open_model gets the resolved path; if the last component became a link
    # since, O_NOFOLLOW refuses to open it.
    (tree / "models" / "swapped.gguf").symlink_to(tree / "elsewhere" / "other.gguf")
    ref = ModelRef(str(tree / "models" / "swapped.gguf"), "load")
    with pytest.raises(ModelFileError, match="cannot open"):
        open_model(ref, InferenceConfig())


def test_a_fifo_is_refused_without_waiting_for_a_writer(tree: Path) -> None:
    fifo = tree / "models" / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="not a regular file"):
        open_model(ModelRef(str(fifo), "load"), InferenceConfig())


def test_open_model_checks_the_file_and_keeps_it_open(tree: Path) -> None:
    opened = open_model(ModelRef(str(tree / "models" / "ok.gguf"), "load"), InferenceConfig())
    try:
        assert opened.info.name == "ok"
        assert os.fstat(opened.fd).st_ino == os.stat(tree / "models" / "ok.gguf").st_ino
        assert opened.memory_limit >= 1 << 30
    finally:
        opened.close()
    assert opened.fd == -1
