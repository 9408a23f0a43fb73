"""`branet`: command line of the online phase."""
from __future__ import annotations

import argparse
import sys

from models.manifest import WeightsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="branet")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from server.registry import Registry
        try:
            Registry().load()  # fail before binding the port, with the file's name
        except WeightsError as e:
            print(f"branet: cannot start: {e}", file=sys.stderr)
            return 1
        import uvicorn
        uvicorn.run("server.app:app", host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
