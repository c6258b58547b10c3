"""The layering rules (see ``tests/layering.py``): the checker on fake trees, then on this repo.

The fake trees show that every rule catches the import it forbids and stays quiet on a
clean tree; ``test_repository_layering`` applies the rules to the real packages.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from layering import LEAVES, check_tree, report

REPO = Path(__file__).resolve().parents[1]

PYPROJECT = """
[tool.flwr.app.components]
serverapp = "strategies.server_app:app"
clientapp = "clients.client_app:app"
"""

#: A small tree that obeys every rule: core, a leaf, strategies, clients, entry points.
CLEAN: dict[str, str] = {
    "mpsl_flwr/__init__.py": "",
    "mpsl_flwr/config.py": "import os\n",
    "mpsl_flwr/data/__init__.py": "from .base import Dataset\n",
    "mpsl_flwr/data/base.py": "from ..config import os\n",
    "mpsl_flwr/ops/__init__.py": "",
    "mpsl_flwr/ops/launch.py": "from strategies import runner\nfrom clients import mpsl\n",
    "mpsl_flwr/ops/certs.py": "",
    "mpsl_flwr/tools/__init__.py": "",
    "mpsl_flwr/tools/compare.py": "from mpsl_flwr.ops import launch\nimport strategies.runner\n",
    "strategies/__init__.py": "",
    "strategies/runner.py": "from mpsl_flwr.data import base\nfrom clients.mpsl import handler\n",
    "strategies/server_app.py": "from strategies.runner import run\n",
    "strategies/fedavg.py": "",
    "clients/__init__.py": "",
    "clients/mpsl.py": "from mpsl_flwr import config\n",
    "clients/client_app.py": "from . import mpsl\n",
    "clients/fedavg.py": "",
}


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path -> source) and the entry-point table under ``root``."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    (root / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    return root


def rules(root: Path) -> list[str]:
    """The names of the rules the tree under ``root`` breaks, one per violation."""
    return [v.rule for v in check_tree(root)]


def test_clean_tree_passes(tmp_path: Path) -> None:
    violations = check_tree(make_tree(tmp_path, CLEAN))
    assert violations == [], report(violations, tmp_path)


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("mpsl_flwr/config.py", "import strategies.fedavg\n"),
        ("mpsl_flwr/config.py", "from strategies import fedavg\n"),
        ("mpsl_flwr/data/base.py", "def f():\n    from clients.fedavg import train\n"),
        # The old home of the tools: outside the leaves it is core.
        ("mpsl_flwr/compare.py", "from strategies.fedavg import FedAvg\n"),
    ],
)
def test_core_importing_strategies_or_clients_fails(tmp_path: Path, path: str, source: str) -> None:
    assert rules(make_tree(tmp_path, {**CLEAN, path: source})) == ["core-imports-app"]


def test_clients_importing_strategies_fails(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {**CLEAN, "clients/mpsl.py": "from strategies import fedavg\n"})
    assert rules(tree) == ["clients-imports-strategies"]


def test_cycle_fails_and_names_its_modules(tmp_path: Path) -> None:
    files = {**CLEAN, "mpsl_flwr/config.py": "def f():\n    from mpsl_flwr.data import base\n"}
    violations = check_tree(make_tree(tmp_path, files))
    assert [v.rule for v in violations] == ["cycle"]
    assert "mpsl_flwr.config -> mpsl_flwr.data.base -> mpsl_flwr.config" in violations[0].message
    assert {e.where(tmp_path) for e in violations[0].edges} == {
        "mpsl_flwr/config.py:2",
        "mpsl_flwr/data/base.py:1",
    }


def test_cycle_through_a_package_init_fails(tmp_path: Path) -> None:
    files = {**CLEAN, "mpsl_flwr/config.py": "from mpsl_flwr.data import Dataset\n"}
    assert rules(make_tree(tmp_path, files)) == ["cycle"]


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    source = """
        import typing
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from mpsl_flwr.data.base import Dataset
        if typing.TYPE_CHECKING:
            import strategies.runner
    """
    assert rules(make_tree(tmp_path, {**CLEAN, "mpsl_flwr/config.py": source})) == []


def test_else_branch_of_type_checking_counts(tmp_path: Path) -> None:
    source = """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            pass
        else:
            import clients
    """
    assert rules(make_tree(tmp_path, {**CLEAN, "mpsl_flwr/config.py": source})) == [
        "core-imports-app"
    ]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("mpsl_flwr/config.py", "from mpsl_flwr.ops import certs\n"),
        ("mpsl_flwr/data/base.py", "from ..ops.certs import make\n"),
        ("strategies/runner.py", "import mpsl_flwr.ops.certs\n"),
        ("clients/mpsl.py", "from mpsl_flwr.cli import main\n"),
        # Entry points are not leaves even though Flower loads them directly.
        ("strategies/server_app.py", "from mpsl_flwr.ops.certs import make\n"),
    ],
)
def test_non_leaf_importing_a_leaf_fails(tmp_path: Path, path: str, source: str) -> None:
    files = {**CLEAN, "mpsl_flwr/cli.py": "", path: source}
    assert rules(make_tree(tmp_path, files)) == ["imports-leaf"]


def test_entry_point_under_a_leaf_is_not_a_leaf(tmp_path: Path) -> None:
    pyproject = PYPROJECT.replace("clients.client_app", "mpsl_flwr.ops.client_app")
    files = {**CLEAN, "mpsl_flwr/ops/client_app.py": "from mpsl_flwr.ops import certs\n"}
    make_tree(tmp_path, files)
    (tmp_path / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    # Were it a leaf, importing another leaf would be fine.
    assert rules(tmp_path) == ["imports-leaf"]


@pytest.mark.layering
def test_repository_layering() -> None:
    """The real packages obey the rules. Fails, listing every violation, until they do."""
    violations = check_tree(REPO)
    if violations:
        leaves = ", ".join(LEAVES)
        pytest.fail(f"leaves: {leaves}\n{report(violations, REPO)}", pytrace=False)
