"""The documentation cannot drift from the commands: every `segcls-*` entry point has its generated reference
page (mkdocs-click over the command itself), listed in the site's navigation. `make docs` then fails on a
command that does not import or a broken link (`mkdocs build --strict`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference" / "commands"
DIRECTIVE = re.compile(r"^::: mkdocs-click\n((?:    :\w+: .*\n)+)", re.MULTILINE)


def scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def directives(page: Path) -> list[dict[str, str]]:
    found = []
    for block in DIRECTIVE.findall(page.read_text()):
        found.append(dict(re.findall(r"    :(\w+): (.*)", block)))
    return found


@pytest.mark.parametrize("name", sorted(scripts()))
def test_every_command_has_a_generated_reference_page(name):
    module, attr = scripts()[name].split(":")
    page = REFERENCE / f"{name}.md"
    assert page.is_file(), f"{name} has no reference page: add {page.relative_to(ROOT)} (see the others)"
    assert {"module": module, "command": attr, "prog_name": name}.items() <= directives(page)[0].items(), (
        f"{page.relative_to(ROOT)} must render {module}:{attr} as {name} with mkdocs-click"
    )
    nav = (ROOT / "mkdocs.yml").read_text()
    assert f"reference/commands/{name}.md" in nav, f"{name}'s reference page is not in mkdocs.yml's nav"


def test_no_reference_page_for_a_command_that_is_gone():
    pages = {p.stem for p in REFERENCE.glob("segcls-*.md")}
    assert pages <= set(scripts()), f"reference pages without a command: {sorted(pages - set(scripts()))}"


def test_the_reference_pages_render_subcommands_of_groups():
    """A group's page lists its subcommands, so a new subcommand appears without a new page; the options are
    click's own `--help` text (style plain), so the page says what `--help` says."""
    for name in scripts():
        (options,) = directives(REFERENCE / f"{name}.md")
        assert options.get("list_subcommands") == "true" and options.get("style") == "plain", name


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move detail into docs/"
    long = [i + 1 for i, line in enumerate(lines) if len(line) > 110]
    assert not long, f"README.md lines over 110 characters: {long}"


def test_readme_links_resolve():
    """The README is read on its own (GitHub, PyPI): its relative links must name files of the repository."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "no relative links found: the pattern is wrong"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
