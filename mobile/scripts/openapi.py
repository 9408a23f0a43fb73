"""Write the server's OpenAPI document to mobile/src/api/openapi.json (the app's types are generated from it)."""
import json
import sys
from pathlib import Path

from server.app import create_app

out = Path(__file__).resolve().parents[1] / "src" / "api" / "openapi.json"
spec = create_app().openapi()
text = json.dumps(spec, indent=1, sort_keys=True) + "\n"
if "--check" in sys.argv:
    sys.exit(0 if out.read_text() == text else f"{out} differs from the server's OpenAPI: run `make api-types`")
out.write_text(text)
