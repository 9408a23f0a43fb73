"""The ASGI app `server.app:app`: uploads, SAM segmentation, classification and history under /v1.

It never serves an unverified network: the lifespan loads every classifier and SAM model (sha256
checked) before the first request, and a WeightsError stops the start naming the file."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import errors, firebase, offline_docs, web_app
from server.body_limit import BodyLimit
from server.engine import Engine
from server.login_limiter import LoginLimiter
from server.metrics import RequestMetrics
from server.pipeline import ImageMemory, Services
from server.passwords import hash_password, typeable_password
from server.request_context import RequestContext
from server.security import SecurityHeaders
from server.upload_auth import UploadAuth
from server.model_manager import ModelManager
from server.model_registry import ModelRegistry
from server.routers import admin_models, analyses, auth, images, service
from server.schemas import NOTICE
from server.settings import Settings, get_settings
from server.store import HistoryStore, Store, UserStore

MULTIPART_ALLOWANCE = 256 * 1024  # part headers and the prompt field around the image
log = logging.getLogger("branet")


async def follow_models(models: ModelManager, period_s: float) -> None:
    """Poll the models folder's active pointer: an activation made by another replica (or by the CLI on
    the folder) is served here within `period_s` plus the time to load it."""
    from starlette.concurrency import run_in_threadpool
    while True:
        await asyncio.sleep(period_s)
        try:
            await run_in_threadpool(models.follow)
        except Exception:  # noqa: BLE001 - keep following; the next poll tries again
            log.exception("branet: following the models folder failed")


def loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def first_start(store: Store, settings: Settings, host: str | None) -> None:
    """User `dev` (admin) on the very first start, only when the server binds a loopback address (`host`;
    None: not known, as under a plain ASGI server) and BRANET_CREATE_DEV_USER allows it; its password and
    token go to the terminal (stderr) once, never to a log file of ours or an answer."""
    if not (settings.create_dev_user and store.user_count() == 0):
        return
    if not loopback(host):
        print(f"branet: no users yet and the server binds {host or 'an unknown address'}: user 'dev' is created "
              "only on a loopback bind; add users with `branet users add NAME`", file=sys.stderr, flush=True)
        return
    password = typeable_password()
    _, token = store.add_user("dev", admin=True, password_hash=hash_password(password))
    print(f"branet: created user 'dev' (admin); its password (shown once): {password}\n"
          f"branet: its token (shown once): {token}", file=sys.stderr, flush=True)


def open_backends(settings: Settings, host: str | None) -> tuple[UserStore, HistoryStore, Callable[[], None]]:
    """Who signs in (BRANET_AUTH) and where the history lives (BRANET_STORE), and how to close them.
    FirebaseConfigError (before anything is opened) for settings that cannot work."""
    firebase.check_settings(settings)
    store = Store(settings.home) if settings.auth == "local" or settings.store == "sqlite" else None
    fb_app = firebase.admin_app(settings) if firebase.uses_firebase(settings) else None
    users: UserStore = store if settings.auth == "local" else firebase.FirebaseUsers(fb_app, settings)
    if store is not None and settings.auth == "local":
        first_start(store, settings, host)
    history: HistoryStore = store
    if settings.store == "firestore":
        from server.firestore_store import FirestoreStore
        history = FirestoreStore(firebase.firestore_client(settings, fb_app), settings.home, settings.firebase_timeout_s,
                                 bucket=firebase.storage_bucket(settings, fb_app))

    def close() -> None:
        if history is not store:
            history.close()
        if store is not None:
            store.close()
        if fb_app is not None:
            firebase.close_app(fb_app)
    return users, history, close


def create_app(settings: Settings | None = None, engine: Engine | None = None, host: str | None = None) -> FastAPI:
    """`engine`: already loaded (the CLI loads it first, to refuse to start before binding the port);
    `host`: the address the server binds (user `dev` is created only on a loopback one)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal engine
        if getattr(app.state, "services", None) is not None:
            yield  # a second in-process client of a running app (tests): share, do not reload or close
            return
        if engine is None:
            engine = Engine(settings)
            engine.load()  # WeightsError stops the start-up with the missing file's name
        users, history, close_backends = open_backends(settings, host)
        app.state.users = users
        app.state.services = Services(settings, engine, history, ImageMemory(history.image_png))
        registry = ModelRegistry(settings.models_root, settings.weights)
        registry.clean_staging()
        app.state.models = ModelManager(settings, registry, engine)
        follower = asyncio.create_task(follow_models(app.state.models, settings.models_poll_s))
        try:
            yield
        finally:
            follower.cancel()
            app.state.services = None
            engine.close()
            engine = None
            close_backends()

    app = FastAPI(title="BraNet", version="0.2.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"{NOTICE}\n\nBreast ultrasound (us) and mammography (dm): SAM outlines the lesion, "
                              "a ResNet18 says benign or malignant with a calibrated probability. Every /v1 route but "
                              "sign-in and /v1/config needs `Authorization: Bearer <token>`: an API token "
                              "(`branet users add NAME`) or a session token (`POST /v1/auth/sessions`).")
    errors.install(app)
    app.include_router(images.router)
    app.include_router(analyses.router)
    analyses.document_request_body(app)
    app.include_router(service.router)
    app.include_router(auth.router)
    app.include_router(admin_models.router)
    app.state.login_limiter = LoginLimiter(settings.login_max_failures, settings.login_lockout_s,
                                           settings.login_delay_s)  # failed sign-ins, in memory
    offline_docs.install(app)  # /docs and /redoc with local assets only (closed hospital networks)
    web_app.install(app, settings)  # the web build at /app, / redirects there
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + MULTIPART_ALLOWANCE,
                       message=f"the request is larger than the {settings.max_upload_mb:g} MB upload limit",
                       larger={"/v1/admin/models": int(settings.max_model_upload_mb * 1024 * 1024)})
    app.add_middleware(UploadAuth)  # 401 for an upload without a valid token before its body is read
    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestContext)  # X-Request-ID on every answer, JSON 500 for the unhandled
    app.add_middleware(SecurityHeaders,  # outermost: nosniff, CSP, no-store on every answer, 413s and 500s too
                       connect_src=firebase.connect_sources(settings))
    app.state.metrics_mode = settings.metrics
    return app


app = create_app()
