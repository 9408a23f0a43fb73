import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("BRANET_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real data not found at {DATA}: set BRANET_DATA")
    return DATA


@pytest.fixture(scope="session")
def busi_dir(data_dir) -> Path:
    return data_dir / "busi" / "Dataset_BUSI_with_GT"


@pytest.fixture(scope="session")
def mias_dir(data_dir) -> Path:
    return data_dir / "mias"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRANET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
