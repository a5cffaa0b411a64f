"""``seer/models/registry.py`` is the one list of supported architectures; the README's
supported-models table must say the same thing (checked both ways)."""

import os
import re

from seer.models.registry import ARCHITECTURES

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_ARCH = re.compile(r"`([A-Z][A-Za-z0-9_]*(?:ForCausalLM|ForConditionalGeneration|ChatModel|CausalLM))`")


def _readme_architectures() -> set[str]:
    with open(README) as f:
        text = f.read()
    section = text.split("## Supported models", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) > 2, "the supported-models table is missing"
    found = set()
    for row in rows[2:]:
        columns = row.split("|")
        found.update(_ARCH.findall(columns[2]))  # the architectures column
    return found


def test_readme_table_lists_exactly_the_registered_architectures():
    readme = _readme_architectures()
    assert sorted(set(ARCHITECTURES) - readme) == [], "registered but missing from the README table"
    assert sorted(readme - set(ARCHITECTURES)) == [], "in the README table but not registered"


def test_every_registered_family_imports():
    import importlib

    for arch, (module, cls) in ARCHITECTURES.items():
        family = getattr(importlib.import_module(module), cls)
        assert arch in family.architectures, f"{cls} does not claim {arch}"
