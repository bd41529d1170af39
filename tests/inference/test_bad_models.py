"""Corrupt copies of the real model, at start and through `model.load`: the
daemon survives, answers `ping`, and `model.status` says what is wrong.

Each copy changes one header field of the real SmolLM2 file (see
gguf_mutate.py). Some are caught by the daemon's own checks before a runner
starts, some by llama.cpp's, and one makes llama.cpp abort: only the runner
dies of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cortexd.protocol import ModelNotLoaded, Unavailable
from tests.daemon import DaemonProcess, running_daemon, with_test_methods
from tests.inference.conftest import inference_config, wait_state
from tests.inference.gguf_mutate import MUTATIONS, mutate
from tests.inference.helpers import COUNTING_PROMPT

GENERATE = {"prompt": COUNTING_PROMPT, "max_tokens": 4, "temperature": 0}

# What model.status says for each, in the words that name the fault.
SAYS = {
    "block_count": "inference runner crashed: SIGABRT while loading",
    "head_count_zero": "tensor 'blk.0.attn_q.weight' has wrong shape",
    "embedding_length": "invalid n_rot",
    "tensor_type": "has invalid ggml type 1000",
    "tensor_dimension": "the file is truncated",
    "misaligned_offset": "has offset 30081025, expected 30081024",
    "token_count": "expected 30600000",
}
assert SAYS.keys() == MUTATIONS.keys()


@pytest.fixture
def mutated(request: pytest.FixtureRequest, model_path: str, models_dir: Path) -> Iterator[str]:
    """A corrupt copy of the model (the test's parameter names the fault), deleted after."""
    name: str = request.param
    path = models_dir / f"{name}.gguf"
    mutate(model_path, path, name)
    yield str(path)
    path.unlink()


@pytest.mark.parametrize("mutated", sorted(MUTATIONS), indirect=True)
def test_a_corrupt_model_at_start_leaves_the_daemon_serving(mutated: str) -> None:
    name = Path(mutated).stem
    config = inference_config(mutated, max_load_failures=1)
    with running_daemon(config) as d:
        status = wait_state(d, {"failed"})
        assert SAYS[name] in status["reason"], status["reason"]
        assert status["last_error"]["path"] == mutated
        assert d.call("ping")["pong"] is True
        assert d.call("status")["components"]["inference"]["state"] == "failed"
        with pytest.raises(ModelNotLoaded) as info:
            d.call("inference.generate", GENERATE)
        assert SAYS[name] in info.value.data["reason"]
        if name == "block_count":
            exit_info = status["runner"]["last_exit"]
            assert exit_info["signal"] == "SIGABRT"
            assert exit_info["during"] == "loading"
            assert any("GGML_ASSERT" in line for line in exit_info["stderr"])
    assert d.proc.returncode == 0


@pytest.mark.parametrize("mutated", sorted(MUTATIONS), indirect=True)
def test_loading_a_corrupt_model_keeps_the_running_one(
    model_daemon: DaemonProcess, model_path: str, mutated: str
) -> None:
    name = Path(mutated).stem
    before = model_daemon.call("model.status")
    with pytest.raises(Unavailable) as info:
        model_daemon.call("model.load", {"path": mutated}, timeout=120)
    assert SAYS[name] in info.value.message
    assert info.value.data["path"] == mutated
    assert info.value.data["state"] == "ready"
    assert model_daemon.call("ping")["pong"] is True
    status = model_daemon.call("model.status")
    assert status["state"] == "ready"
    assert status["path"] == model_path
    assert status["model"] == before["model"]
    assert status["runner"]["pid"] == before["runner"]["pid"]
    assert SAYS[name] in status["last_error"]["reason"]
    assert model_daemon.call("inference.generate", GENERATE)["text"].startswith(" 9,")


# The daemon's own runner code cannot be imported when the first runner starts,
# as when an upgrade replaced its files under the running daemon.
UNIMPORTABLE_PROCESS_CODE = """
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "cortexd.inference.process":
            raise ImportError("cortexd.inference.process is gone")
        return None


sys.meta_path.insert(0, _Refuse())
TEST_METHODS = []
"""


def test_runner_code_that_cannot_load_fails_the_model_not_the_daemon(model_path: str) -> None:
    config = inference_config(model_path, max_load_failures=1)
    command = with_test_methods(UNIMPORTABLE_PROCESS_CODE)
    with running_daemon(config, command=command) as d:
        status = wait_state(d, {"failed"})
        assert "the runner's code cannot be loaded" in status["reason"], status
        assert "cortexd.inference.process is gone" in status["reason"]
        assert d.call("ping")["pong"] is True
        assert d.call("status")["components"]["inference"]["state"] == "failed"
    assert d.proc.returncode == 0
