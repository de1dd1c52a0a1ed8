"""The served-model contract (tritonvision.contract) and docs/DESIGN.md, which lists it.

PreprocessSpec's readers, writers and round trips are tested in tests/unit/test_client_imaging.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tritonvision import contract
from tritonvision.contract import (
    PUBLISHED_PARAMETERS,
    RESAMPLE_NAMES,
    RUNTIME_PARAMETERS,
    PreprocessSpec,
)

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "DESIGN.md"
# A table row whose first two cells are back-quoted: | `a` | `b` | ...
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def _section(title: str) -> str:
    """The text of DESIGN.md's ``## title...`` section, up to the next ``## `` heading."""
    text = DESIGN.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"DESIGN.md has no '## {title}' section"
    return match.group(1)


def _contract_parameters() -> dict[str, str]:
    """PARAM_* constant name -> key, for every key the contract module defines."""
    return {
        name: value
        for name, value in vars(contract).items()
        if name.startswith("PARAM_") and isinstance(value, str)
    }


def test_design_parameter_table_lists_exactly_the_contract_keys() -> None:
    rows = _ROW.findall(_section("Model-config parameters"))
    table = dict(rows)
    assert len(table) == len(rows), "a key is listed twice"
    keys = set(_contract_parameters().values())
    assert set(table) - keys == set(), "DESIGN.md lists keys the contract lacks"
    assert keys - set(table) == set(), "contract keys missing from DESIGN.md"
    for key, constant in table.items():
        assert _contract_parameters()[constant] == key, f"{constant} is not {key!r}"


def test_every_parameter_key_is_published_or_runtime_never_both() -> None:
    keys = set(_contract_parameters().values())
    assert set(PUBLISHED_PARAMETERS) | set(RUNTIME_PARAMETERS) == keys
    assert set(PUBLISHED_PARAMETERS) & set(RUNTIME_PARAMETERS) == set()
    assert all(key.startswith("tritonvision.") for key in keys)


@pytest.mark.parametrize(
    "constant",
    [
        "DEFAULT_MODEL",
        "PREPROCESS_SUFFIX",
        "ENSEMBLE_SUFFIX",
        "TEXT_SUFFIX",
        "TOKENIZE_SUFFIX",
        "TEXTS_SUFFIX",
        "TOKENIZER_DIR",
        "TEXTS_INPUT",
        "INPUT_IDS",
        "ATTENTION_MASK",
        "PIXELS_INPUT",
        "IMAGES_INPUT",
        "EMBEDDINGS_OUTPUT",
        "BATCH_AXIS",
        "DEFAULT_MAX_IMAGE_PIXELS",
        "DEFAULT_CACHE_DIR",
    ],
)
def test_design_names_table_gives_each_name_its_contract_value(constant: str) -> None:
    table = dict(_ROW.findall(_section("Names")))
    assert constant in table, f"DESIGN.md's Names table lacks {constant}"
    assert table[constant] == str(getattr(contract, constant))


def test_design_spec_example_is_the_clip_default_and_names_every_filter() -> None:
    block = re.search(r"```json\n(.*?)```", DESIGN.read_text(encoding="utf-8"), re.S)
    assert block, "DESIGN.md has no JSON example of the preprocessing spec"
    lines = block.group(1).splitlines()
    example = json.loads("\n".join(line.split("//")[0] for line in lines))
    assert PreprocessSpec.from_dict(example) == PreprocessSpec.clip_default(224)
    assert example == PreprocessSpec.clip_default(224).to_dict()
    (filters,) = [line.split("//")[1] for line in lines if line.lstrip().startswith('"resample"')]
    assert {name.strip() for name in filters.split("|")} == set(RESAMPLE_NAMES)


def test_contract_is_a_leaf_importing_only_the_error_tree() -> None:
    code = (
        "import sys, tritonvision.contract\n"
        "print(sorted(m for m in sys.modules if m.startswith('tritonvision')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == str(
        ["tritonvision", "tritonvision.contract", "tritonvision.errors"]
    )
