"""The adversarial bad-input classes: one module per class, each with rows of the CLI
contract (``cli_contract_support.py``) for every command line the class applies to.

A module adds the materials its rows need by overriding ``extra_materials``; the rows
then see the base materials and those together.
"""

from __future__ import annotations

import pytest
from cli_contract_support import make_materials


@pytest.fixture(scope="module")
def extra_materials(tmp_path_factory) -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def materials(tmp_path_factory, extra_materials) -> dict[str, str]:
    return {**make_materials(tmp_path_factory.mktemp("cli_materials")), **extra_materials}
