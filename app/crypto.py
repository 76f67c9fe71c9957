"""Encryption at rest for tokens and webhook secrets: cryptography's MultiFernet.

``LP_SECRET_KEY`` holds one or more comma-separated keys, newest first (rotation: prepend a new
key, restart, run ``rotate``; old ciphertexts still decrypt). Each key is a Fernet key or any
passphrase of at least 16 characters, from which a Fernet key is derived with SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.errors import ConfigError


def _fernet(key: str) -> Fernet:
    key = key.strip()
    try:
        if len(base64.urlsafe_b64decode(key.encode())) == 32:
            return Fernet(key.encode())
    except (ValueError, binascii.Error):
        pass
    if len(key) < 16:
        raise ConfigError("LP_SECRET_KEY: each key must be a Fernet key or at least 16 characters")
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


class Crypto:
    def __init__(self, secret_key: str) -> None:
        keys = [k for k in secret_key.split(",") if k.strip()]
        if not keys:
            raise ConfigError("LP_SECRET_KEY: required to store tokens and webhook secrets")
        self._multi = MultiFernet([_fernet(k) for k in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._multi.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._multi.decrypt(token).decode()
        except InvalidToken:
            raise ConfigError(
                "LP_SECRET_KEY cannot decrypt stored secrets (was the key changed without rotation?)"
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt under the newest key."""
        return self._multi.rotate(token)
