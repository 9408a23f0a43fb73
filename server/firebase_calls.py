"""Every call the Firestore store makes to Firestore or Cloud Storage, bounded in time.

One operation gets BRANET_FIREBASE_TIMEOUT_S (transient errors are retried within it); past it, or when the
service is unreachable, `FirestoreUnavailable`: 503 `storage_unavailable`, naming the service, and saying that
nothing was stored when the operation was a write."""
from __future__ import annotations

import logging
import time
from typing import Callable, Literal, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
# What the pinned google-cloud-storage's own DEFAULT_RETRY retries (private, but the library's definition).
from google.cloud.storage.retry import _should_retry as storage_transient

from server.store import DuplicateRequest, StorageError

log = logging.getLogger("branet.store")
T = TypeVar("T")
Service = Literal["firestore", "storage"]
SERVICE_NAMES: dict[str, str] = {"firestore": "the history database (Firestore)",
                                 "storage": "the image store (Cloud Storage)"}
FIRESTORE_DOWN = (gexc.RetryError, gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.InternalServerError,
                  gexc.Unknown, gexc.Aborted, gexc.ResourceExhausted, gexc.Cancelled, TimeoutError)
# Cloud Storage and this server's HTTP client: the failures that mean "unreachable or too slow", not a bug.
STORAGE_DOWN = (requests.ConnectionError, requests.Timeout, gexc.RetryError, gexc.ServiceUnavailable,
                gexc.InternalServerError, gexc.BadGateway, gexc.GatewayTimeout, gexc.TooManyRequests,
                gexc.DeadlineExceeded, TimeoutError)


class FirestoreUnavailable(StorageError):
    status, code = 503, "storage_unavailable"

    def __init__(self, timeout_s: float, writing: bool, service: Service = "firestore"):
        super().__init__(f"{SERVICE_NAMES[service]} did not answer within {timeout_s:g} s"
                         + (": nothing was stored" if writing else "") + "; try again shortly")


class Deadline:
    """One operation's time left: each call gets it as its timeout and as its retry's deadline."""

    def __init__(self, timeout_s: float, writing: bool, service: Service = "firestore"):
        self.timeout_s, self.writing, self.service = timeout_s, writing, service
        self.end = time.monotonic() + timeout_s

    def _left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0.05:
            raise FirestoreUnavailable(self.timeout_s, self.writing, self.service)
        return left

    def kw(self) -> dict:
        left = self._left()
        return {"timeout": left, "retry": gretry.Retry(predicate=gretry.if_transient_error, initial=0.05,
                                                        maximum=0.5, multiplier=2, timeout=left)}

    def storage_kw(self) -> dict:
        """The same bound for google-cloud-storage (HTTP): its own idea of transient (connection refused or
        reset, 408, 429, 5xx) is retried, quickly, within the time left."""
        left = self._left()
        return {"timeout": left, "retry": gretry.Retry(predicate=storage_transient, initial=0.05, maximum=0.5,
                                                        multiplier=2, timeout=left)}


def bounded(timeout_s: float, writing: bool, fn: Callable[[Deadline], T], service: Service = "firestore") -> T:
    """`fn(deadline)` against Firestore (or Cloud Storage); unreachable or too slow -> FirestoreUnavailable naming
    the service. Other errors (a bug, a refused write) pass through."""
    try:
        return fn(Deadline(timeout_s, writing, service))
    except (StorageError, DuplicateRequest):
        raise
    except Exception as err:
        if not isinstance(err, STORAGE_DOWN if service == "storage" else FIRESTORE_DOWN):
            raise
        log.warning("branet.store: %s: %s: %s", "Cloud Storage" if service == "storage" else "Firestore",
                    type(err).__name__, err)
        raise FirestoreUnavailable(timeout_s, writing, service) from err


def may_have_landed(err: BaseException) -> bool:
    """False when Firestore surely did not apply a write: it was never reached (every try UNAVAILABLE, as when
    nothing listens), or the time was up before the write was sent."""
    cause = err.__cause__ if isinstance(err, StorageError) else err
    if isinstance(cause, gexc.RetryError):
        cause = cause.cause
    if isinstance(err, FirestoreUnavailable) and cause is None:
        return False  # Deadline.kw: no time left to send it
    return not isinstance(cause, gexc.ServiceUnavailable)
