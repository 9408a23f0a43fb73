"""Server settings, all from the environment (prefix BRANET_); the defaults run with no configuration."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.manifest import WEIGHTS_DIR

Modality = Literal["us", "dm"]
PromptKind = Literal["box", "points", "mask", "auto"]

# Measured zero-shot on BUSI (training/results/segmentation): LiteMedSAM is best from a box but was
# trained on boxes only (a single point gives almost nothing); MobileSAM answers points. Box and mask
# prompts go by default to the SAM the modality's classifier was trained on (manifest `input.sam`).
DEFAULT_ROUTE: dict[str, str] = {"box": "litemedsam", "mask": "litemedsam", "points": "mobilesam", "auto": "mobilesam"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRANET_", extra="ignore")

    home: Path = Field(Path.home() / ".branet", description="SQLite history and uploaded images")
    weights: Path = Field(WEIGHTS_DIR, description="folder with the classifier manifest and weights: the committed "
                                                   "ones, registered as each role's first version in models_dir")
    models_dir: Path | None = Field(None, description="the versioned models folder (server/model_registry.py; default "
                                                      "HOME/models): every deployed version and the active one per "
                                                      "role; survives restarts, shared by replicas")
    models_poll_s: float = Field(2.0, gt=0, description="how often a server reads the models folder's active pointer "
                                                        "(an activation on another replica reaches this one)")
    max_model_upload_mb: float = Field(512.0, gt=0, description="largest model upload (POST /v1/admin/models)")
    probe_images: Path | None = Field(None, description="folder of real images for a deployed model's smoke "
                                                        "inference: us/ and dm/ of PNG/JPEG (default: BUSI and "
                                                        "mini-MIAS under BRANET_DATA)")
    data: Path = Field(Path(__file__).resolve().parents[1].parent / "shared" / "data",
                       description="the datasets folder (BRANET_DATA): default probe images, and where a relative "
                                   "gate folder of a model upload is looked up")
    gate_margin: float = Field(0.02, ge=0, description="a deployed model's gate: its AUC on the admin's validation "
                                                       "folder may be this much below the active model's")
    max_upload_mb: float = Field(10.0, gt=0, description="largest accepted image file")
    max_pixels: int = Field(40_000_000, gt=0, description="decompression-bomb guard")
    min_side: int = Field(16, ge=1, description="smallest accepted image side in pixels")
    max_aspect: float = Field(8.0, ge=1, description="largest accepted long/short side ratio")
    session_hours: float = Field(12.0, gt=0, description="lifetime of a sign-in session token")
    login_max_failures: int = Field(5, ge=1, description="failed sign-ins per account name, and per client "
                                                         "address, before it is locked")
    login_lockout_s: float = Field(300.0, gt=0, description="window over which failed sign-ins are counted")
    login_delay_s: float = Field(0.2, ge=0, description="added wait per recent failure before answering one "
                                                        "(capped at 2 s)")
    sam_routes: dict[Modality, dict[PromptKind, str]] = Field(
        default_factory=dict,
        description="SAM model per modality and prompt kind (JSON), over the defaults: box and mask -> the SAM the "
                    "modality's classifier was trained on (manifest input.sam, else litemedsam), points and auto -> mobilesam")
    sam_checkpoints: dict[str, Path] = Field(default_factory=dict,
                                             description="checkpoint path per SAM name (needed for vit_b/l/h)")
    sam_sha256: dict[str, str] = Field(default_factory=dict, description="expected sha256 of those checkpoints")
    amg_points_per_side: int = Field(32, ge=1, description="automatic mask generator grid (paper: 32)")
    embed_on_upload: bool = Field(True, description="encode the box-route SAM embedding at upload")
    cache_mb: float = Field(1024.0, ge=0, description="SAM embedding cache bound")
    queue_size: int = Field(16, ge=1, description="inference jobs waiting before 503")
    torch_threads: int | None = Field(None, description="torch intra-op threads (default: torch's)")
    device: str = Field("auto", description="cpu, cuda or auto")
    encoder_runtime: Literal["openvino", "onnxruntime", "torch"] | None = Field(
        None, description="what runs the SAM image encoders (models/encoder_runtime.py); default by measurement: "
                          "on a CPU OpenVINO (else ONNX Runtime) if its install check passed, on CUDA torch")
    encoder_precision: Literal["f32", "bf16"] | None = Field(
        None, description="the image encoders' precision (default f32; bf16 on OpenVINO only, if its install check passed)")
    metrics: Literal["loopback", "token", "open"] = Field(
        "loopback", description="who may read /metrics: clients on 127.0.0.1/::1, an admin's bearer token, or anyone")
    create_dev_user: bool = Field(True, description="on first start, create user 'dev' and print its token")
    app_dir: Path = Field(Path(__file__).resolve().parents[1] / "mobile" / "dist",
                          description="the app's web build (Expo export, baseUrl /app) served at /app")
    # Firebase (server/firebase.py): sign-in and history in the cloud; the defaults stay local + SQLite.
    auth: Literal["local", "firebase"] = Field(
        "local", description="who signs people in: local (users, passwords and tokens in SQLite) or firebase "
                             "(Firebase Authentication ID tokens; needs store=firestore)")
    store: Literal["sqlite", "firestore"] = Field(
        "sqlite", description="where the history lives: sqlite (in home) or firestore (documents in Firestore, "
                              "image bytes as BRANET_BYTES_STORE says)")
    bytes_store: Literal["local", "cloud-storage"] = Field(
        "local",
        description="with store=firestore, where image and mask bytes live: local (files in home) or cloud-storage "
                    "(objects users/{uid}/... in BRANET_STORAGE_BUCKET, through firebase_admin.storage)")
    storage_bucket: str | None = Field(None, description="the Cloud Storage bucket of bytes=cloud-storage (e.g. "
                                                         "PROJECT.firebasestorage.app)")
    firebase_project_id: str | None = Field(None, description="the Firebase project's id (needed by firebase/firestore)")
    firebase_credentials: Path | None = Field(
        None, description="a service-account JSON file; without one, Application Default Credentials")
    firebase_api_key: str | None = Field(None, description="the web app's public API key, given to the app by "
                                                           "GET /v1/config (not a secret)")
    firebase_auth_domain: str | None = Field(None, description="the web app's auth domain, for GET /v1/config "
                                                               "(default: PROJECT.firebaseapp.com)")
    firebase_emulators: bool = Field(False, description="honour FIREBASE_AUTH_EMULATOR_HOST / FIRESTORE_EMULATOR_HOST "
                                                        "/ STORAGE_EMULATOR_HOST (tests, development); without it "
                                                        "the server refuses to start when one is set")
    firebase_auth_emulator_url: str | None = Field(
        None, description="the Auth emulator's address as the app's browser reaches it, for GET /v1/config when the "
                          "server reaches it by another name (docker-compose.firebase.yml); default "
                          "http://FIREBASE_AUTH_EMULATOR_HOST")
    firebase_timeout_s: float = Field(5.0, gt=0, description="longest wait for Firestore, Cloud Storage or Firebase "
                                                             "Authentication before a request answers 503")

    @property
    def models_root(self) -> Path:
        return self.models_dir or self.home / "models"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def routes(self, trained_on: dict[str, str | None]) -> dict[str, dict[str, str]]:
        """The SAM per modality and prompt kind: the defaults (box/mask to `trained_on[modality]`), then overrides."""
        out = {}
        for modality in ("us", "dm"):
            box_sam = trained_on.get(modality) or DEFAULT_ROUTE["box"]
            out[modality] = {**DEFAULT_ROUTE, "box": box_sam, "mask": box_sam, **self.sam_routes.get(modality, {})}
        return out


@lru_cache
def get_settings() -> Settings:
    return Settings()
