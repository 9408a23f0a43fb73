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


# One in-process server with the real models for all API tests (loading SAM + classifiers takes seconds).
@pytest.fixture(scope="session")
def api(tmp_path_factory):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    home = tmp_path_factory.mktemp("home")
    # Schemathesis signs in with made-up names from one address ("testclient"): no lockout, no delay here
    # (tests/test_auth.py checks both on apps of its own, with the defaults).
    app = create_app(Settings(home=home, create_dev_user=False, amg_points_per_side=4,
                              login_max_failures=1_000_000, login_delay_s=0))
    with TestClient(app) as client:
        client.home = home
        client.store = app.state.users
        client.services = app.state.services
        yield client


@pytest.fixture(scope="session")
def alice(api):
    return {"Authorization": f"Bearer {api.store.add_user('alice')[1]}"}


@pytest.fixture(scope="session")
def bob(api):
    return {"Authorization": f"Bearer {api.store.add_user('bob')[1]}"}


