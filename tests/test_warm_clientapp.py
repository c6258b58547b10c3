"""The warm ClientApp executor's start-up check (``mpsl-deploy --fast``): it relies on
Flower internals, checked by their source (``flower_patches.PATCHED_SOURCES``), not by
Flower's version string. No SuperNode is started: ``serve_forever`` is replaced."""

from __future__ import annotations

import flwr
import pytest
from flwr.supernode.runtime import run_clientapp

from mpsl_flwr.ops import flower_patches, warm_clientapp

ARGS = ["--runtime-api-address", "127.0.0.1:9", "--preload"]  # no preloads: fast


@pytest.fixture
def served(monkeypatch) -> list[str]:
    """Addresses that ``main`` started serving (instead of polling a SuperNode)."""
    started: list[str] = []
    monkeypatch.setattr(
        warm_clientapp.WarmExecutor,
        "serve_forever",
        lambda self: started.append(self.runtime_api_address),
    )
    for env in flower_patches.PATCHED_SOURCES:
        monkeypatch.delenv(env, raising=False)
    return started


def test_every_flower_object_it_imports_is_source_checked() -> None:
    checked = flower_patches.PATCHED_SOURCES[flower_patches.WARM_CLIENTAPP]
    for name, obj in vars(warm_clientapp).items():
        module = getattr(obj, "__module__", None) or ""
        if not module.startswith("flwr"):
            continue
        if module.startswith("flwr.proto."):  # a protobuf message: its generated module
            assert module in checked, name
        else:
            own = f"{module}:{obj.__qualname__}"
            assert any(key == own or key.startswith(own + ".") for key in checked), name


def test_the_installed_flower_passes_and_the_executor_starts(served) -> None:
    flower_patches.check_sources(flower_patches.WARM_CLIENTAPP)
    assert warm_clientapp.main(ARGS) == 0
    assert served == ["127.0.0.1:9"]


def test_the_version_string_does_not_decide(monkeypatch, served) -> None:
    monkeypatch.setattr(flwr, "__version__", "1.42.0")  # 1.42.0: the same sources
    assert warm_clientapp.main(ARGS) == 0
    assert served == ["127.0.0.1:9"]


def test_a_changed_flower_function_is_refused_in_one_line(monkeypatch, capsys, served) -> None:
    def push_task_output(client, context, sub_status, details) -> None:  # not Flower's
        pass

    monkeypatch.setattr(run_clientapp, "push_task_output", push_task_output)
    assert warm_clientapp.main(ARGS) == 2
    assert served == []
    message = capsys.readouterr().err.strip()
    assert "\n" not in message
    assert "flwr.supernode.runtime.run_clientapp:push_task_output" in message
    assert "--isolation subprocess" in message


def test_a_removed_flower_function_is_refused_in_one_line(monkeypatch, capsys, served) -> None:
    monkeypatch.delattr(run_clientapp, "push_message")
    assert warm_clientapp.main(ARGS) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "run_clientapp:push_message" in message
