"""The primitives, all from ``cryptography``: X25519, HKDF-SHA256, AES-256-GCM and AES-256-CTR.

Every derived key is bound to the round's context (experiment and round) and to its purpose, so a
key or a ciphertext from one round, or one pair, is useless in another.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
_AES_BLOCK = 16


class DecryptionFailed(Exception):
    """A ciphertext was altered, misaddressed or from another round."""


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_public(data: bytes) -> None:
    """Refuse (ValueError) 32 bytes that no key agreement can use: a low-order point, such as all
    zeros, makes every X25519 exchange with it zero, which ``cryptography`` refuses; one advertised
    would fail each neighbour's share of keys, and the server's unmasking."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(data))
    except ValueError:
        raise ValueError("a public key is not a usable X25519 key (a low-order point)") from None


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(data)


def derive(secret: bytes, context: bytes, purpose: bytes) -> bytes:
    """A 32-byte key from key material, bound to the round and the purpose (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context + b"|" + purpose).derive(
        secret
    )


def agree(own: X25519PrivateKey, peer_public: bytes, context: bytes, purpose: bytes) -> bytes:
    """The key two clients share (X25519 then HKDF); the same from either side."""
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return derive(shared, context, purpose)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM with a random nonce, prepended; ``associated`` is authenticated, not sent."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    if len(ciphertext) < NONCE_BYTES + 16:
        raise DecryptionFailed("ciphertext too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated)
    except InvalidTag as exc:
        raise DecryptionFailed("ciphertext does not authenticate") from exc


def mask_block(seed: bytes, start: int, count: int) -> np.ndarray:
    """Elements ``start .. start+count`` of the mask a seed expands to (AES-256-CTR keystream).

    Any block can be made on its own (the counter starts at the block's first byte), so masking and
    unmasking stream a vector of any length in the memory of one block.
    """
    if len(seed) != KEY_BYTES:
        raise ValueError("a mask seed is 32 bytes")
    first_byte = 8 * start
    counter, skip = divmod(first_byte, _AES_BLOCK)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(counter.to_bytes(_AES_BLOCK, "big"))).encryptor()
    stream = encryptor.update(bytes(skip + 8 * count))
    return np.frombuffer(stream, dtype="<u8", offset=skip, count=count).astype(np.uint64, copy=False)
