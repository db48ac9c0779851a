"""The README is part of the product: its settings table, its page list and its two commands must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from labrador.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \| `" + ENV_PREFIX, README, flags=re.MULTILINE))
    assert documented == set(Settings.model_fields), (
        f"missing: {sorted(set(Settings.model_fields) - documented)}, "
        f"stale: {sorted(documented - set(Settings.model_fields))}"
    )


def test_ci_runs_exactly_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup && scripts/test" in README and "scripts/setup && labrador dev" in README
    assert re.search(r"^scripts/setup$", ci, flags=re.MULTILINE)
    assert re.search(r"^scripts/test$", ci, flags=re.MULTILINE)


def test_every_docs_page_is_in_the_documentation_table() -> None:
    listed = set(re.findall(r"^\| \[docs/([a-z-]+\.md)\]\(docs/\1\) \|", README, flags=re.MULTILINE))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert listed == pages, (
        f"missing from README 'Documentation': {sorted(pages - listed)}, stale: {sorted(listed - pages)}")
