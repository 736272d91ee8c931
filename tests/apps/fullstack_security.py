"""Password hashing and signed access tokens, as the full-stack FastAPI template does them (with
hashlib/hmac instead of passlib/PyJWT): shared by the fullstack_* test apps."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

SECRET_KEY = b"change-me-in-production"
ALGORITHM = "HS256"
ACCESS_TOKEN_EXPIRE_S = 3600


# PASSWORD_HASHER=argon2: Argon2id as the template hashes passwords (pwdlib's Argon2Hasher is argon2-cffi's
# PasswordHasher: four parallel lanes, each a thread of the C library).
PASSWORD_HASHER = os.environ.get("PASSWORD_HASHER", "pbkdf2")


def hash_password(password: str, salt: bytes | None = None) -> str:
    if PASSWORD_HASHER == "argon2" and salt is None:
        return _argon2().hash(password)
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 20_000)
    return f"{salt.hex()}${digest.hex()}"


def verify_password(password: str, hashed: str) -> bool:
    if hashed.startswith("$argon2"):
        try:
            return _argon2().verify(hashed, password)  # mark: argon2 verify
        except Exception:
            return False
    salt, _ = hashed.split("$", 1)
    return hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), hashed)


def _argon2():  # type: ignore[no-untyped-def]
    from argon2 import PasswordHasher

    return PasswordHasher()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create_access_token(subject: int) -> str:
    payload = _b64(json.dumps({"sub": str(subject), "exp": int(time.time()) + ACCESS_TOKEN_EXPIRE_S}).encode())
    signature = _b64(hmac.new(SECRET_KEY, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def decode_access_token(token: str) -> int | None:
    """The user id of a valid, unexpired token; None otherwise."""
    try:
        payload, signature = token.split(".", 1)
    except ValueError:
        return None
    expected = _b64(hmac.new(SECRET_KEY, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        return None
    claims = json.loads(_unb64(payload))
    if claims["exp"] < time.time():
        return None
    return int(claims["sub"])
