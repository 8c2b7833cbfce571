"""Starting the server: a bad config or model is refused at once, with exit code 2 and the reason on stderr's last line."""
from __future__ import annotations

import pytest

from llmops_runners.errors import EXIT_BAD_INPUT

from .serve_support import ServerProcess, server_config


def start_failing(config: dict, workdir) -> tuple[int, str]:
    server = ServerProcess(config, workdir).start(wait=False)
    try:
        code = server.wait_exit(120)
    finally:
        server.stop()
    return code, server.log.strip().splitlines()[-1]


def test_an_unknown_config_key_exits_2_naming_it(tiny, tmp_path):
    code, last = start_failing({**server_config(tiny["model"]), "maxBatchSiz": 4}, tmp_path)
    assert code == EXIT_BAD_INPUT and "unknown field 'maxBatchSiz'" in last


@pytest.mark.parametrize("change, says", [
    ({"model": {"path": "/nonexistent/model"}}, "does not exist"),
    ({"maxModelLen": 4096}, "maxModelLen 4096 is more than the model's 256 positions"),
    ({"adapters": [{"name": "wrong", "path": "BAD_SHAPE"}]}, "adapters 'wrong'"),
])
def test_a_model_that_cannot_be_served_exits_2_with_the_reason(tiny, tmp_path, change, says):
    if "adapters" in change:
        change = {"adapters": [{"name": "wrong", "path": str(tiny["bad-shape"])}]}
    code, last = start_failing({**server_config(tiny["model"]), **change}, tmp_path)
    assert code == EXIT_BAD_INPUT and says in last, last
