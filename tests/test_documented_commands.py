"""Every ``--run-config`` / ``RUN_CONFIG`` the README, docs and examples show works
verbatim under ``flwr run`` (Flower's own parser) and under ``make run`` / ``mpsl-run``
(the project's, which is Flower's): the keys exist and the values pass validation."""

from __future__ import annotations

import re

import pytest
from flwr.common.config import parse_config_args

from mpsl_flwr.config import parse_overrides, resolve_config
from mpsl_flwr.project import PROJECT_DIR

DOCUMENTS = sorted(
    [
        PROJECT_DIR / "README.md",
        *(PROJECT_DIR / "docs").glob("*.md"),
        *(PROJECT_DIR / "examples").glob("*.sh"),
        *(PROJECT_DIR / "examples").glob("*.py"),
    ]
)
# --run-config "..." / RUN_CONFIG='...': the quoted shell word, quotes of the other kind
# inside it.
SHOWN = re.compile(r"""(?:--run-config[ =]|RUN_CONFIG=)(?P<q>["'])(?P<text>.*?)(?P=q)""")


def shown_overrides() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        for match in SHOWN.finditer(path.read_text()):
            text = match["text"]
            if text.strip() in ("", "...", "key=value ...") or "$" in text:
                continue
            found.append((f"{path.relative_to(PROJECT_DIR)}: {text}", text))
    return found


SHOWN_OVERRIDES = shown_overrides()


def test_the_documents_show_run_configs() -> None:
    assert len(SHOWN_OVERRIDES) >= 10


@pytest.mark.parametrize(
    "text", [t for _, t in SHOWN_OVERRIDES], ids=[i for i, _ in SHOWN_OVERRIDES]
)
def test_a_documented_run_config_works_under_flwr_run_and_mpsl_run(text: str) -> None:
    text = re.sub(r"<[^>]+>", "example", text)  # placeholders such as run-name=<name>
    flower = parse_config_args([text])
    assert flower, f"flwr run reads nothing from {text!r}"
    assert parse_overrides([text]) == flower
    resolve_config(flower)  # keys exist, values valid
