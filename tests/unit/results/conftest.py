"""Source images the result-writer tests build results about (one of each kind, seeded)."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from tests.helpers.dicom_factory import make_dx, make_mr, make_us


@pytest.fixture(scope="module")
def mr() -> Dataset:
    return make_mr(seed=7)


@pytest.fixture(scope="module")
def dx() -> Dataset:
    return make_dx(seed=11)


@pytest.fixture(scope="module")
def us() -> Dataset:
    return make_us(seed=5)
