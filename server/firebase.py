"""Firebase for the server: the Admin SDK app, ID-token sign-in (BRANET_AUTH=firebase) and admin rights.

Production needs a project id (BRANET_FIREBASE_PROJECT_ID) and credentials: a service-account file
(BRANET_FIREBASE_CREDENTIALS) or, without one, Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
or the metadata server on Google Cloud). The emulators' variables (FIREBASE_AUTH_EMULATOR_HOST,
FIRESTORE_EMULATOR_HOST, STORAGE_EMULATOR_HOST) make the SDK accept unsigned tokens and talk to a local database
or bucket: they are honoured only with BRANET_FIREBASE_EMULATORS=true, and a server that finds one set without it
refuses to start (google-cloud-storage reads STORAGE_EMULATOR_HOST by itself, whatever we pass it).

Every request's bearer is checked with `verify_id_token(token, check_revoked=True)` (one call to Firebase
Authentication per request: a revoked session or a disabled account stops at once). The user is the token's
uid; its name the e-mail address; admin when the custom claim `admin` is true (`branet users grant-admin`)."""
from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from pathlib import Path

from server.errors import ApiError
from server.settings import Settings
from server.store import Session, User

EMULATOR_VARS = ("FIREBASE_AUTH_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


class FirebaseConfigError(Exception):
    """The settings cannot work: the server refuses to start, naming the setting."""


def uses_firebase(settings: Settings) -> bool:
    return settings.auth == "firebase" or settings.store == "firestore"


def uses_cloud_storage(settings: Settings) -> bool:
    return settings.store == "firestore" and settings.bytes_store == "cloud-storage"


def check_settings(settings: Settings) -> None:
    """FirebaseConfigError for settings that cannot work or would be unsafe; nothing for local + sqlite."""
    if settings.bytes_store == "cloud-storage" and settings.store != "firestore":
        raise FirebaseConfigError("BRANET_BYTES_STORE=cloud-storage keeps the bytes of the Firestore history: set "
                                  "BRANET_STORE=firestore (SQLite keeps its images in BRANET_HOME)")
    if not uses_firebase(settings):
        return
    if not settings.firebase_project_id:
        raise FirebaseConfigError("BRANET_AUTH=firebase and BRANET_STORE=firestore need BRANET_FIREBASE_PROJECT_ID "
                                  "(the Firebase project's id)")
    if settings.auth == "firebase" and settings.store != "firestore":
        raise FirebaseConfigError("BRANET_AUTH=firebase keeps the history in Firestore: set BRANET_STORE=firestore")
    if uses_cloud_storage(settings) and not settings.storage_bucket:
        raise FirebaseConfigError("BRANET_BYTES_STORE=cloud-storage needs BRANET_STORAGE_BUCKET (the Cloud Storage "
                                  "bucket, e.g. PROJECT.firebasestorage.app)")
    present = [name for name in EMULATOR_VARS if os.environ.get(name)]
    if present and not settings.firebase_emulators:
        raise FirebaseConfigError(
            f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} set: the Firebase SDK would use a local "
            "emulator (and accept unsigned tokens); set BRANET_FIREBASE_EMULATORS=true if that is meant (tests, "
            "development), else unset it")
    if settings.firebase_credentials is not None and not Path(settings.firebase_credentials).is_file():
        raise FirebaseConfigError(f"BRANET_FIREBASE_CREDENTIALS: no such file {settings.firebase_credentials}")


def credential(settings: Settings):
    from firebase_admin import credentials
    if settings.firebase_credentials is not None:
        return credentials.Certificate(str(settings.firebase_credentials))
    return credentials.ApplicationDefault()


def emulated(settings: Settings, variable: str) -> bool:
    return settings.firebase_emulators and bool(os.environ.get(variable))


def admin_app(settings: Settings):
    """A Firebase Admin app of its own (a unique name: several servers may live in one process, as in tests)."""
    import firebase_admin
    check_settings(settings)
    # The SDK retries a timed-out read once: half the bound per try keeps a request within it.
    options = {"projectId": settings.firebase_project_id, "httpTimeout": settings.firebase_timeout_s / 2}
    if uses_cloud_storage(settings):
        options["storageBucket"] = settings.storage_bucket
    return firebase_admin.initialize_app(credential(settings), options, name=f"branet-{uuid.uuid4().hex[:12]}")


def close_app(app) -> None:
    import firebase_admin
    firebase_admin.delete_app(app)


def firestore_client(settings: Settings, app):
    from server.firestore_store import client
    if emulated(settings, "FIRESTORE_EMULATOR_HOST"):
        return client(settings.firebase_project_id)  # anonymous, as the emulator's owner
    return client(settings.firebase_project_id, app.credential.get_credential())


def storage_bucket(settings: Settings, app):
    """The bucket of BRANET_BYTES_STORE=cloud-storage (None for local bytes): firebase_admin.storage's, with the app's
    credentials; with the Storage emulator allowed and set, anonymous (the emulator checks no credentials, and
    Application Default Credentials may not exist on a test machine)."""
    if not uses_cloud_storage(settings):
        return None
    if emulated(settings, "STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        client = storage.Client(project=settings.firebase_project_id, credentials=AnonymousCredentials())
        return client.bucket(settings.storage_bucket)
    from firebase_admin import storage
    return storage.bucket(settings.storage_bucket, app=app)


def browser_auth_emulator(settings: Settings) -> str | None:
    """The Auth emulator's address as the app's browser reaches it (None unless the emulators are allowed and
    one is set): BRANET_FIREBASE_AUTH_EMULATOR_URL where the server reaches it by another name (compose)."""
    emulator = os.environ.get("FIREBASE_AUTH_EMULATOR_HOST") if settings.firebase_emulators else None
    return (settings.firebase_auth_emulator_url or f"http://{emulator}") if emulator else None


def connect_sources(settings: Settings) -> tuple[str, ...]:
    """What the app's pages may call besides this server (their CSP connect-src): with Firebase sign-in, the
    Firebase JS SDK talks to Firebase Authentication (or its emulator, when the emulators are allowed)."""
    if settings.auth != "firebase":
        return ()
    emulator = browser_auth_emulator(settings)
    if emulator:
        return (emulator,)
    return ("https://identitytoolkit.googleapis.com", "https://securetoken.googleapis.com")


def _unavailable(settings: Settings) -> ApiError:
    return ApiError(503, "auth_unavailable", f"Firebase Authentication did not answer within "
                                             f"{settings.firebase_timeout_s:g} s; try again shortly",
                    {"Retry-After": "5"})


class FirebaseUsers:
    """The UserStore of BRANET_AUTH=firebase: people are Firebase Authentication's users, signed in by the app
    with the Firebase SDK; this server keeps no passwords, sessions or API tokens of its own."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    def identity_for_bearer(self, token: str):
        """The Identity of a Firebase ID token; ApiError 401 (expired, revoked, malformed, another project's,
        a deleted account), 403 (a disabled account) or 503 (Firebase Authentication unreachable)."""
        from firebase_admin import auth, exceptions

        from server.auth import Identity
        project = self.settings.firebase_project_id
        try:
            claims = auth.verify_id_token(token, app=self.app)
            # The SDK does not check the expiry of the emulator's unsigned tokens (it does a real token's, above).
            if claims.get("exp", 0) <= time.time():
                raise auth.ExpiredIdTokenError("Token expired", None)
            claims = auth.verify_id_token(token, app=self.app, check_revoked=True)  # asks Firebase Authentication
        except auth.ExpiredIdTokenError:
            raise ApiError(401, "token_expired", "the Firebase ID token has expired: get a fresh one "
                                                 "(getIdToken(true)) and send it again", CHALLENGE) from None
        except auth.RevokedIdTokenError:
            raise ApiError(401, "token_revoked", "the Firebase ID token was revoked (signed out everywhere, or the "
                                                 "account's rights changed): sign in again", CHALLENGE) from None
        except auth.UserDisabledError:
            raise ApiError(403, "user_disabled", "this account is disabled: ask an administrator") from None
        except auth.UserNotFoundError:
            raise ApiError(401, "invalid_token", "the account of this token no longer exists", CHALLENGE) from None
        except auth.InvalidIdTokenError as err:
            if '"aud"' in str(err) or '"iss"' in str(err):
                message = f"the token was issued for another Firebase project (this server accepts {project}'s)"
            else:
                message = f"not a valid Firebase ID token ({str(err).split('. ')[0]})"
            raise ApiError(401, "invalid_token", message, CHALLENGE) from None
        except (exceptions.UnavailableError, exceptions.DeadlineExceededError, exceptions.UnknownError,
                exceptions.InternalError) as err:
            raise _unavailable(self.settings) from err
        except ValueError as err:  # an empty or non-string token
            raise ApiError(401, "invalid_token", f"not a valid Firebase ID token ({err})", CHALLENGE) from None
        user = User(claims["uid"], claims.get("email") or claims["uid"], claims.get("admin") is True)
        expires = dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc).isoformat(timespec="milliseconds")
        return Identity(user, "firebase", token, expires)

    # UserStore: nothing is local
    def user_for_token(self, token: str) -> User | None:
        return None

    def password_of(self, name: str) -> tuple[User, str | None] | None:
        return None

    def set_password(self, name: str, password_hash: str) -> bool:
        return False

    def rehash_password(self, user: User, password_hash: str) -> None:
        return None

    def add_session(self, user: User, lifetime: dt.timedelta) -> tuple[str, str]:
        raise ApiError(400, "firebase_sign_in", "this server signs in with Firebase Authentication")

    def session_for_token(self, token: str) -> Session | None:
        return None

    def end_session(self, token: str) -> bool:
        return False


def set_admin(settings: Settings, email: str, admin: bool) -> tuple[str, bool]:
    """Set or clear the `admin` custom claim of the user with this e-mail; clearing it also revokes the user's
    refresh tokens, so that the rights end at once (check_revoked). Returns (uid, whether anything changed)."""
    from firebase_admin import auth
    app = admin_app(settings)
    try:
        user = auth.get_user_by_email(email, app=app)
        claims = dict(user.custom_claims or {})
        changed = (claims.get("admin") is True) != admin
        if admin:
            claims["admin"] = True
        else:
            claims.pop("admin", None)
        auth.set_custom_user_claims(user.uid, claims or None, app=app)
        if not admin:
            auth.revoke_refresh_tokens(user.uid, app=app)
        return user.uid, changed
    finally:
        close_app(app)
