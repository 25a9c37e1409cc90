"""The install promises hold: every pin of requirements-cpu.txt installs on the Python that pyproject's
`requires-python` admits, and the licence pyproject names ships in full."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "requirements-cpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            found[name] = version
    return found


def python_floor() -> Version:
    """The lowest Python `requires-python` admits: its `>=` bound."""
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    floors = [Version(s.version) for s in spec if s.operator == ">="]
    assert floors, f"requires-python {spec} has no >= floor"
    return max(floors)


@pytest.mark.parametrize("name", sorted(pins()))
def test_each_pin_installs_on_the_python_floor(name):
    """Read from the installed distribution's metadata (`make setup` installs every pin)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name} is pinned in requirements-cpu.txt but not installed: run `make setup`")
    installed = Version(dist.version)
    assert installed.public == Version(pins()[name]).public, f"{name} {installed} installed, {pins()[name]} pinned"
    needs = dist.metadata.get("Requires-Python")
    floor = python_floor()
    if needs:
        assert floor in SpecifierSet(needs), (
            f"{name}=={pins()[name]} needs Python {needs}, but requires-python admits {floor}: raise the floor "
            "or the pin"
        )


def test_the_pins_cover_every_extra_that_ci_installs():
    """`make setup` installs requirements-cpu.txt and these extras: each of their direct requirements is pinned."""
    pinned = {canonicalize_name(n) for n in pins()}
    extras = PYPROJECT["project"]["optional-dependencies"]
    wanted = PYPROJECT["project"]["dependencies"] + [
        r
        for extra in ("train", "export", "prepare", "view", "openvino", "docs", "dev", "cluster")
        for r in extras[extra]
    ]
    names = {canonicalize_name(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in wanted}
    assert names <= pinned, f"unpinned: {sorted(names - pinned)}"


def test_the_licence_file_is_the_full_apache_text():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    floor = re.search(r"setuptools>=(\d+)", " ".join(PYPROJECT["build-system"]["requires"]))
    assert floor and int(floor.group(1)) >= 77, "an SPDX `license` string needs setuptools >= 77"
