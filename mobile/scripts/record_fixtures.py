"""Record real server answers (real models, a real BUSI image) as the app's component-test fixtures.

    .venv/bin/python mobile/scripts/record_fixtures.py   # writes mobile/__tests__/fixtures/*.json
"""
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from models.preprocessing import box_of_mask
from server.app import create_app
from server.settings import Settings

DATA = Path(os.environ.get("BRANET_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
OUT = Path(__file__).resolve().parents[1] / "__tests__" / "fixtures"


def main() -> None:
    folder = DATA / "busi" / "Dataset_BUSI_with_GT" / "malignant"
    image = (folder / "malignant (1).png").read_bytes()
    box = [int(v) for v in box_of_mask(np.asarray(Image.open(folder / "malignant (1)_mask.png").convert("L")) > 0)]
    with tempfile.TemporaryDirectory() as home:
        app = create_app(Settings(home=Path(home), create_dev_user=False))
        with TestClient(app) as client:
            _, token = app.state.users.add_user("fixture")
            auth = {"Authorization": f"Bearer {token}"}
            res = client.post("/v1/analyses", headers=auth, files={"file": ("scan.png", image)},
                              data={"modality": "us", "prompt": json.dumps({"box": box})})
            res.raise_for_status()
            analysis = res.json()
            analysis["segmentation"]["mask_png"] = ""  # the app draws from the RLE; keeps the fixture small
            models = client.get("/v1/models", headers=auth).json()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "analysis-us.json").write_text(json.dumps(analysis, indent=1) + "\n")
    (OUT / "models.json").write_text(json.dumps(models, indent=1) + "\n")


if __name__ == "__main__":
    main()
