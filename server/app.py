"""The ASGI app. The full /v1 API (upload, SAM segmentation, analyses) is issue 7; this serves health
and what is loaded, and refuses to start without verified weights."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.registry import Registry

NOTICE = "Research use only. Not for clinical diagnosis."
registry = Registry()


@asynccontextmanager
async def lifespan(app: FastAPI):
    registry.load()  # WeightsError stops the start-up with the missing file's name
    yield


app = FastAPI(title="BraNet", version="0.1.0", description=NOTICE, lifespan=lifespan)


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.get("/readyz")
def readyz() -> dict:
    return {"ready": registry.ready, "models": sorted(registry.classifiers)}


@app.get("/v1/models")
def models() -> dict:
    return {"notice": NOTICE, "classifiers": registry.describe()}
