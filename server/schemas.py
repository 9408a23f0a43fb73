"""What the API returns (and accepts as JSON), with the examples the OpenAPI shows."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.segmentation import Prompt

NOTICE = "Research use only. Not for clinical diagnosis."
Modality = Literal["us", "dm"]
Box = list[int]


class ImageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"image_id": "3f2a9c0d5e6b4b1f8a7c6d5e4f3a2b1c", "width": 449, "height": 598,
         "sha256": "9b1d...e4", "modality": "us"}]})
    image_id: str
    width: int
    height: int
    sha256: str = Field(description="of the uploaded file")
    modality: Modality


class Rle(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: list[int] = Field(description="COCO uncompressed RLE, column-major, starting with background")


class CandidateOut(BaseModel):
    box: Box = Field(description="x0, y0, x1, y1 (exclusive) in image pixels: the box given to SAM")
    score: float = Field(description="the localiser's lesion score of this region (its highest cell)")


class SegmentationOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"mask_png": "iVBORw0KGgo...", "mask_rle": {"size": [598, 449], "counts": [1200, 35, 410]},
         "box": [8, 133, 440, 404], "score": 0.93, "sam_model": "litemedsam", "prompt": "box",
         "encoder_runtime": "openvino", "encoder_precision": "f32",
         "timings_ms": {"encode": 0.0, "decode": 41.2}}]})
    mask_png: str = Field(description="PNG (base64) of the image's size, 255 = lesion")
    mask_rle: Rle
    box: Box = Field(description="x0, y0, x1, y1 (exclusive) of the mask")
    score: float = Field(description="SAM's predicted IoU of the mask")
    sam_model: str
    prompt: Literal["box", "points", "mask", "auto"]
    encoder_runtime: Literal["openvino", "onnxruntime", "torch"] = Field(
        "torch", description="what ran SAM's image encoder for this result (results stored before it was recorded: torch)")
    encoder_precision: Literal["f32", "bf16"] = Field("f32", description="the image encoder's precision")
    timings_ms: dict[str, float]
    auto_mode: Literal["localiser", "sam-amg"] | None = Field(
        None, description="how an automatic result was found: the lesion localiser or the paper's automatic mask "
                          "generator; null for a drawn prompt (box, points, mask)")
    candidates: list[CandidateOut] | None = Field(
        None, description="localiser mode: the regions scoring at least lesion_threshold, best first; the first "
                          "is the one outlined (another one: send its box as a box prompt)")
    lesion_score: float | None = Field(None, description="localiser mode: the best candidate's score")
    lesion_threshold: float | None = Field(None, description="localiser mode: the score a lesion needs (below it "
                                                             "the answer is 422 no_lesion_found, with the score)")


class SegmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prompt": {"box": [8, 133, 440, 404]}}]})
    prompt: Prompt = Field(default_factory=Prompt)


class AnalysisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"image_id": "3f2a9c0d5e6b4b1f8a7c6d5e4f3a2b1c", "prompt": {"box": [8, 133, 440, 404]}}]})
    image_id: str = Field(min_length=1, max_length=64)
    prompt: Prompt = Field(default_factory=Prompt)


class ModelInfo(BaseModel):
    name: str
    sha256: str
    version: str


class ClassifierInfo(ModelInfo):
    id: str | None = Field(None, description="its version id in the models folder (GET /v1/models): the version "
                                             "this result was computed with")
    regime: str
    temperature: float


class LocaliserInfo(ModelInfo):
    id: str | None = Field(None, description="its version id in the models folder")


class AnalysisModels(BaseModel):
    classifier: ClassifierInfo
    sam: ModelInfo
    localiser: LocaliserInfo | None = Field(None, description="the lesion localiser that placed the box (automatic "
                                                              "prompt, localiser mode); null otherwise")


class AnalysisOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "a1b2c3d4e5f60718293a4b5c6d7e8f90", "image_id": "3f2a9c0d5e6b4b1f8a7c6d5e4f3a2b1c",
        "created": "2026-11-25T18:00:00.000+00:00", "modality": "us", "label": "malignant", "p_malignant": 0.81,
        "threshold": 0.246, "segmentation": SegmentationOut.model_config["json_schema_extra"]["examples"][0],
        "roi_png": "iVBORw0KGgo...", "heatmap_png": "iVBORw0KGgo...",
        "models": {"classifier": {"name": "classifier-us", "sha256": "592847ef...", "version": "592847ef12fe",
                                  "regime": "real", "temperature": 1.66},
                   "sam": {"name": "litemedsam", "sha256": "79d8c9dc...", "version": "79d8c9dca6db"}},
        "timings_ms": {"encode": 950.1, "decode": 40.3, "crop": 1.2, "classify": 45.5, "total": 1060.0},
        "notice": NOTICE}]})
    id: str
    image_id: str
    created: str
    modality: Modality
    label: Literal["benign", "malignant"]
    p_malignant: float = Field(description="calibrated (temperature-scaled) probability of malignancy")
    threshold: float = Field(description="p_malignant >= threshold is called malignant (chosen for 0.90 sensitivity)")
    segmentation: SegmentationOut
    roi_png: str = Field(description="PNG (base64): the 128x128 gray crop the classifier saw")
    heatmap_png: str = Field(description="PNG (base64): Grad-CAM of the malignant class over that crop")
    models: AnalysisModels
    timings_ms: dict[str, float]
    notice: str = NOTICE


class AnalysisSummary(BaseModel):
    id: str
    image_id: str
    created: str
    modality: Modality
    label: Literal["benign", "malignant"]
    p_malignant: float
    classifier: str
    notice: str = NOTICE


class AnalysisPage(BaseModel):
    items: list[AnalysisSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null at the end")
    notice: str = NOTICE


class ServedSamProbe(BaseModel):
    sam: str = Field(description="the SAM whose image embedding of the lesion the probe reads")
    alpha: float = Field(description="served logit difference = classifier's + alpha x the probe's")
    regions: list[str] = Field(description="where the embedding is averaged, in order: inside SAM's mask (mask), "
                                           "over the classifier's crop (crop), in a band behind, above or beside "
                                           "the lesion (posterior, anterior, lateral)")
    stages: list[str] = Field(description="which outputs of SAM's image encoder are averaged over the regions, in "
                                          "order: the image embedding (neck) and the encoder's stages before it "
                                          "(layer0 .. layer3)")
    iou_token: bool = Field(description="whether it also reads the SAM mask decoder's IoU token for the box of "
                                        "SAM's mask (after the regions)")
    sha256: str


class SiteQuality(BaseModel):
    site: str = Field(description="the data set (hospital, scanner), e.g. busi, busbra")
    n: int = Field(description="lesions")
    auc: float | None = Field(description="ROC AUC on this site's lesions")
    auc_ci: tuple[float, float] | None = Field(description="its 95% confidence interval, resampling patients")
    sensitivity: float | None = Field(description="at the served threshold")
    specificity: float | None = Field(description="at the served threshold")


class OutOfSiteQuality(SiteQuality):
    trained_on: list[str] = Field(description="the sites the recipe was trained and calibrated on in this test; "
                                              "`site` was never seen")
    ece: float | None = Field(description="expected calibration error on the unseen site")


class ModelQuality(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"cv_auc": 0.942, "cv_auc_ci": [0.920, 0.959], "sensitivity": 0.90, "specificity": 0.812, "folds": 5,
         "roi_source": "sam", "cross_fitted_sensitivity": 0.90, "cross_fitted_specificity": 0.80, "sites": [],
         "out_of_site": []}]})
    cv_auc: float = Field(description="ROC AUC of the out-of-fold predictions")
    cv_auc_ci: tuple[float, float] = Field(description="its 95% confidence interval [low, high]")
    sensitivity: float = Field(description="out of fold, at the served threshold (fitted on all folds: it meets its "
                                           "target by construction; see cross_fitted_sensitivity)")
    specificity: float = Field(description="out of fold, at the served threshold")
    folds: int = Field(description="cross-validation folds")
    roi_source: str = Field(description="what placed the crops it was measured on: expert, box or sam")
    cross_fitted_sensitivity: float | None = Field(None, description="out of fold, at a threshold fitted on the "
                                                                     "other folds only: what to expect on new cases")
    cross_fitted_specificity: float | None = Field(None, description="the same, specificity")
    sites: list[SiteQuality] = Field([], description="the cross-validation per site trained on")
    out_of_site: list[OutOfSiteQuality] = Field([], description="the same recipe trained on some sites and tested "
                                                                "on another it never saw: the estimate for a new "
                                                                "hospital")

    @classmethod
    def from_metrics(cls, metrics: dict) -> "ModelQuality | None":
        """From a manifest's metrics; None when any of them is missing."""
        keys = ("oof_roc_auc", "oof_roc_auc_ci", "oof_sensitivity", "oof_specificity", "cv_folds", "roi_source")
        if any(metrics.get(k) is None for k in keys):
            return None
        crossed = metrics.get("cross_fitted") or {}
        sites = [SiteQuality(site=s, n=m["n"], auc=m["roc_auc"], auc_ci=m["roc_auc_ci"], sensitivity=m["sensitivity"],
                             specificity=m["specificity"]) for s, m in sorted((metrics.get("per_site") or {}).items())]
        held = [OutOfSiteQuality(site=m["tested_on"], trained_on=m["trained_on"], n=m["n"], auc=m["roc_auc"],
                                 auc_ci=m["roc_auc_ci"], sensitivity=m["sensitivity"], specificity=m["specificity"],
                                 ece=m["ece"]) for m in metrics.get("out_of_site") or []]
        return cls(cv_auc=metrics["oof_roc_auc"], cv_auc_ci=metrics["oof_roc_auc_ci"],
                   sensitivity=metrics["oof_sensitivity"], specificity=metrics["oof_specificity"],
                   folds=metrics["cv_folds"], roi_source=metrics["roi_source"],
                   cross_fitted_sensitivity=crossed.get("sensitivity"),
                   cross_fitted_specificity=crossed.get("specificity"), sites=sites, out_of_site=held)


class ServedClassifier(BaseModel):
    modality: Modality
    name: str
    id: str | None = Field(None, description="its version id in the models folder (see versions)")
    sha256: str
    version: str
    architecture: str
    regime: str
    members: int
    sam_probe: ServedSamProbe | None = None
    temperature: float
    threshold: float
    quality: ModelQuality | None = Field(description="measured out-of-fold in cross-validation; null when the "
                                                     "manifest does not say")
    metrics: dict


class ServedSam(BaseModel):
    name: str
    sha256: str
    checkpoint: str
    encoder_runtime: Literal["openvino", "onnxruntime", "torch"] = Field(
        description="what runs the image encoder (BRANET_ENCODER_RUNTIME, else the measured default)")
    encoder_precision: Literal["f32", "bf16"]
    encoder_sha256: str | None = Field(description="the exported encoder file's sha256, checked at start "
                                                   "(null on torch)")


class ServedLocaliser(BaseModel):
    modality: Modality
    name: str
    id: str | None = Field(None, description="its version id in the models folder (see versions)")
    sha256: str
    version: str
    sam: str = Field(description="the SAM whose image embedding it reads: the modality's box route")
    threshold: float = Field(description="a candidate scoring at least this is a lesion found; below it the "
                                         "automatic prompt answers no_lesion_found")
    level: float = Field(description="cells at or above this lesion probability form the candidate regions")
    limit: int = Field(description="candidates returned at most")
    metrics: dict


class ModelVersionOut(BaseModel):
    """One version of a role in the models folder (server/model_registry.py)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "classifier-us-v2", "role": "classifier-us", "sha256": "1560028d5f08" + "0" * 52,
        "files": {"classifier-us.safetensors": "1560028d5f08" + "0" * 52}, "source": "upload",
        "deployed_by": "dev", "deployed_at": "2026-12-01T15:00:00.000+00:00", "gate": None, "active": True,
        "activated_by": "dev", "activated_at": "2026-12-01T15:01:00.000+00:00", "regime": "real",
        "threshold": 0.27, "quality": None}]})
    id: str
    role: str = Field(description="classifier-us, classifier-dm, localiser-us or localiser-dm")
    sha256: str = Field(description="the classifier's (or localiser's) file's sha256")
    files: dict[str, str] = Field(description="every file of the version (classifier, SAM probe, SAM decoders) "
                                              "and its sha256")
    source: Literal["committed", "upload"] = Field(description="the weights committed with the server, or an "
                                                               "admin's upload")
    deployed_by: str
    deployed_at: str
    gate: dict | None = Field(None, description="its validation gate, when the admin asked for one: AUCs of it "
                                                "and of the version active then, on the same folder")
    active: bool
    activated_by: str | None = Field(None, description="who made it active last (null: never active)")
    activated_at: str | None = None
    regime: str | None = None
    threshold: float | None = None
    quality: ModelQuality | None = Field(None, description="measured, from its manifest (as for classifiers)")


class ModelsOut(BaseModel):
    notice: str = NOTICE
    classifiers: list[ServedClassifier]
    sam: list[ServedSam]
    routes: dict[str, dict[str, str]] = Field(description="SAM model per modality and prompt kind")
    localisers: list[ServedLocaliser] = Field(
        default_factory=list, description="the lesion localisers served (an automatic prompt `{}` uses the "
                                          "modality's; a modality without one uses sam-amg)")
    versions: dict[str, list[ModelVersionOut]] = Field(
        default_factory=dict, description="per role every version in the models folder, oldest first")


class ActivationOut(BaseModel):
    role: str
    active: str = Field(description="the version now served in this role")
    previous: str | None = Field(description="the version it replaced")
    sha256: str
    serial: int = Field(description="the models folder's change counter after this change")
    embeddings_dropped: list[str] = Field(description="SAM models whose cached embeddings were dropped (their "
                                                      "weights or the encoder stages kept changed)")


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="allow")
    at: str
    action: Literal["register", "upload", "refuse", "activate", "rollback"]
    actor: str
    role: str | None = None
    version: str | None = None
    check: str | None = Field(None, description="a refusal: the check that failed")
    message: str | None = None


class AuditOut(BaseModel):
    events: list[AuditEvent] = Field(description="oldest first; append-only")


# sign-in and what the app needs to know before it
Role = Literal["admin", "clinician"]


class SignInRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"username": "alice", "password": "k7dq-m2xa-9fhe"}]})
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    name: str
    role: Role


class SessionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"token": "bns_Xk2...", "expires_at": "2026-11-26T06:00:00.000+00:00",
         "user": {"name": "alice", "role": "clinician"}}]})
    token: str = Field(description="send as `Authorization: Bearer <token>` until expires_at")
    expires_at: str = Field(description="ISO-8601, UTC")
    user: UserOut


class MeOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "alice", "role": "clinician", "auth": "session", "expires_at": "2026-11-26T06:00:00.000+00:00"}]})
    name: str
    role: Role
    auth: Literal["session", "token", "firebase"] = Field(
        description="signed in (session), an API token, or a Firebase ID token (servers with auth firebase)")
    expires_at: str | None = Field(description="when the session or the Firebase ID token ends (ISO-8601, UTC); "
                                               "null for an API token")


class FirebaseWebConfig(BaseModel):
    """The public values the Firebase JS SDK's initializeApp needs (not secrets: every web client has them)."""
    project_id: str
    api_key: str | None = Field(description="the web API key (null: not configured on the server)")
    auth_domain: str
    auth_emulator: str | None = Field(None, description="the Auth emulator's URL when the server runs against the "
                                                        "Firebase emulators (tests, development): the app connects "
                                                        "to it (connectAuthEmulator); null in production")


class ConfigOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"auth": "local", "max_upload_mb": 10.0, "max_upload_bytes": 10485760,
         "accepted_types": ["image/png", "image/jpeg"], "modalities": ["us", "dm"], "min_side": 16,
         "version": "0.2.0", "notice": NOTICE}]})
    auth: Literal["local", "firebase"] = Field(
        description="how users sign in: local = user name and password on this server (POST /v1/auth/sessions); "
                    "firebase = Firebase Authentication (e-mail and password, with the Firebase SDK and `firebase`), "
                    "its ID token sent as the bearer")
    firebase: FirebaseWebConfig | None = Field(None, description="the Firebase web config when auth is firebase")
    max_upload_mb: float
    max_upload_bytes: int
    accepted_types: list[str] = Field(description="image types accepted by upload (decided by content)")
    modalities: list[Modality]
    min_side: int = Field(description="smallest accepted image side in pixels")
    version: str = Field(description="server version")
    notice: str = NOTICE
