"""BraNet's online phase: the FastAPI app `server.app:app` and the `branet` CLI."""
