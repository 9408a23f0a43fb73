"""What is served and whether it is up: /v1/models, /healthz, /readyz, /metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from server.auth import current_user
from server.deps import services
from server.errors import COMMON_ERRORS, ErrorResponse
from server.metrics import exposition
from server.pipeline import Services
from server.schemas import ModelQuality, ModelsOut
from server.security import metrics_access

router = APIRouter()


@router.get("/v1/models", response_model=ModelsOut, tags=["models"], responses=COMMON_ERRORS,
            dependencies=[Depends(current_user)], summary="The classifiers and SAM models served, and the routes")
def served_models(request: Request, svc: Services = Depends(services)) -> dict:
    engine = svc.engine
    served = engine.served  # one snapshot: a swap during this answer does not mix two versions
    classifiers = [{"modality": m, "name": e.name, "id": served.versions.get(m), "sha256": e.sha256,
                    "version": e.sha256[:12],
                    "architecture": e.architecture, "regime": e.regime, "members": e.members,
                    "sam_probe": e.sam_probe and {"sam": e.sam_probe.sam, "alpha": e.sam_probe.alpha,
                                                  "regions": list(e.sam_probe.regions),
                                                  "stages": list(e.sam_probe.stages), "iou_token": e.sam_probe.iou_token,
                                                  "sha256": e.sam_probe.sha256},
                    "temperature": e.temperature, "threshold": e.threshold,
                    "quality": ModelQuality.from_metrics(e.metrics), "metrics": e.metrics}
                   for m, (_, e) in sorted(served.classifiers.items())]
    sam = [{"name": name, "sha256": s.sam.sha256, "checkpoint": s.sam.checkpoint.name,
            "encoder_runtime": s.runtime, "encoder_precision": s.precision,
            "encoder_sha256": s.encoder.sha256 if s.encoder else None}
           for name, s in sorted(served.segmenters.items())]
    localisers = [{"modality": m, "name": e.name, "id": served.localiser_versions.get(m), "sha256": e.sha256,
                   "version": e.sha256[:12], "sam": e.sam, "threshold": e.threshold, "level": e.level,
                   "limit": e.limit, "metrics": e.metrics} for m, (_, e) in sorted(served.localisers.items())]
    manager = getattr(request.app.state, "models", None)
    return {"classifiers": classifiers, "sam": sam, "routes": served.routes, "localisers": localisers,
            "versions": manager.listing() if manager else {}}


@router.get("/healthz", tags=["service"], summary="The process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["service"], summary="Every served model is loaded",
            responses={503: {"description": "models not loaded yet"}})
def readyz(response: Response, svc: Services = Depends(services)) -> dict:
    engine = svc.engine
    if not engine.ready:
        response.status_code = 503
    return {"ready": engine.ready, "classifiers": sorted(engine.classifiers), "sam": sorted(engine.segmenters)}


@router.get("/metrics", tags=["service"], response_class=Response, dependencies=[Depends(metrics_access)],
            summary="Prometheus metrics (BRANET_METRICS: loopback clients, an admin's token, or open)",
            responses={200: {"content": {"text/plain": {}}},
                       401: {"model": ErrorResponse, "description": "BRANET_METRICS=token and no valid token"},
                       403: {"model": ErrorResponse, "description": "not a loopback client, or not an admin"}})
def metrics(svc: Services = Depends(services)) -> Response:
    body, content_type = exposition(svc.engine)
    return Response(body, media_type=content_type)
