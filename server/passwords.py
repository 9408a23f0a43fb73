"""Sign-in passwords: Argon2id hashes (argon2-cffi's RFC 9106 defaults), rules, and typeable new ones."""
from __future__ import annotations

import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 1024  # hashing cost does not depend on it, but a sign-in body stays small
TYPEABLE = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: 32 symbols, 5 bits each

_hasher = PasswordHasher()  # Argon2id


def check_rules(password: str) -> None:
    """ValueError with a message for a person when the password cannot be used."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"the password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValueError(f"the password may have at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def verify(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; with no hash (unknown user) a dummy one is checked, so both take as long."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def typeable_password(groups: int = 3, size: int = 4) -> str:
    """E.g. 'k7dq-m2xa-9fhe': 60 random bits that a person can read off a terminal and type on a phone."""
    return "-".join("".join(secrets.choice(TYPEABLE) for _ in range(size)) for _ in range(groups))
