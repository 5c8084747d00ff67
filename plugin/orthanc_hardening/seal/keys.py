"""Signing keys without I/O: key ids, signers, verification and the key ring.

* ``key_id`` is the first 16 hex digits of SHA-256 of the DER SubjectPublicKeyInfo (DESIGN.md §6).
* ``parse_signing_key`` decrypts the passphrase-protected PKCS#8 PEM named by
  ``Hardening.SigningKey``: Ed25519 (default), ECDSA P-256 or RSA (signed with RSA-PSS).
* ``KeyRing`` signs with the current key and verifies with the current key and the trusted
  ones only. Any other key id fails with ``UnknownKeyError``; a bad signature with
  ``SealInvalidError``.

Reading and writing key files and the key registry is ``stores/key_files.py``'s work; the
caller passes bytes, passphrases and ``now``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from orthanc_hardening.errors import ConfigError, SealInvalidError, UnknownKeyError

SIGNING_KEY = "Hardening.SigningKey"
TRUSTED_KEYS = "Hardening.TrustedKeys"
ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-pss")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class SigningKey(Protocol):
    """What signing needs from the current key (``Signer`` here, a token key elsewhere)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class CurrentKey(Protocol):
    """The current key as the key ring holds it: a ``Signer`` (file key) or a token key."""

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    """What verification needs from the trusted keys (``KeyRing``, or a cache in front of it).

    ``verify`` raises ``UnknownKeyError`` for a key that is neither current nor trusted and
    ``SealInvalidError`` (an ``IntegrityError``) for a bad signature; it never returns a bool.
    """

    def verify(self, kid: str, data: bytes, signature: bytes) -> None: ...


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    """Return our name of a key's signature algorithm.

    Raises:
        ValueError: the key is of a kind we do not sign with (a caller bug).
    """
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"unsupported curve {key.curve.name}")
        return "ecdsa-p256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"RSA key of {key.key_size} bits is too short (2048 at least)")
        return "rsa-pss"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def public_der(public_key: PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_pem(public_key: PublicKey) -> bytes:
    """The PEM SubjectPublicKeyInfo of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key: PublicKey) -> str:
    """DESIGN.md §6: the first 16 hex digits of SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_der(public_key)).hexdigest()[:16]


def verify_signature(public_key: PublicKey, data: bytes, signature: bytes) -> None:
    """Verify ``signature`` over ``data`` with ``public_key``.

    Raises:
        SealInvalidError: the signature does not verify.
    """
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            public_key.verify(signature, data, _pss(), hashes.SHA256())
    except InvalidSignature as exc:
        raise SealInvalidError(f"signature does not verify with key {key_id(public_key)}") from exc


@dataclass(frozen=True)
class Signer:
    """The current signing key: ``key_id``, ``algorithm`` and ``sign(data)``."""

    private_key: Any
    key_id: str
    algorithm: str

    @classmethod
    def of(cls, private_key: PrivateKey) -> Signer:
        """Wrap a private key.

        Raises:
            ValueError: unsupported key type (a caller bug; loading refuses it first).
        """
        kid = key_id(private_key.public_key())
        return cls(private_key=private_key, key_id=kid, algorithm=algorithm_of(private_key))

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()  # type: ignore[no-any-return]

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (Ed25519; ECDSA P-256 with SHA-256, DER; RSA-PSS with SHA-256)."""
        if self.algorithm == "ed25519":
            return self.private_key.sign(data)  # type: ignore[no-any-return]
        if self.algorithm == "ecdsa-p256":
            return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[no-any-return]
        return self.private_key.sign(data, _pss(), hashes.SHA256())  # type: ignore[no-any-return]

    def __repr__(self) -> str:  # never show key material
        return f"Signer(key_id={self.key_id!r}, algorithm={self.algorithm!r})"


def parse_signing_key(pem: bytes, passphrase: bytes | None, source: str) -> Signer:
    """Decrypt an encrypted PKCS#8 PEM signing key.

    Args:
        pem: the key file's bytes.
        passphrase: its passphrase (from ``Hardening.SigningKeyPassphraseEnv``), or ``None``.
        source: where the bytes came from, for the error message (a path).

    Returns:
        The signer.

    Raises:
        ConfigError: (key ``Hardening.SigningKey``) not an encrypted PEM private key, the
            passphrase is missing or wrong, or the algorithm is unsupported.
    """
    if b"ENCRYPTED" not in pem:
        raise ConfigError(SIGNING_KEY, f"{source} is not an encrypted PKCS#8 key; protect it with a passphrase")
    if not passphrase:
        raise ConfigError(SIGNING_KEY, "the key is encrypted and no passphrase is set in the environment")
    try:
        private_key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(SIGNING_KEY, f"cannot decrypt {source}: wrong passphrase or not a PEM private key") from exc
    try:
        return Signer.of(private_key)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(SIGNING_KEY, f"unsupported key algorithm: {exc}") from exc


def parse_public_key(pem: bytes, source: str, config_key: str = TRUSTED_KEYS) -> PublicKey:
    """Parse a PEM public key (SubjectPublicKeyInfo) or certificate.

    Raises:
        ConfigError: (key ``config_key``) not a public key, or an unsupported algorithm.
    """
    try:
        if b"BEGIN CERTIFICATE" in pem:
            from cryptography import x509

            public_key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            public_key = serialization.load_pem_public_key(pem)
        algorithm_of(public_key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(config_key, f"{source} is not a supported public key: {exc}") from exc
    return public_key  # type: ignore[no-any-return]


def generate_private_key(algorithm: str = "ed25519") -> PrivateKey:
    """Make a new private key.

    Raises:
        ValueError: unknown algorithm name (one of ``ALGORITHMS``).
    """
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-pss":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def encrypt_private_key(private_key: PrivateKey, passphrase: bytes) -> bytes:
    """PKCS#8 PEM encrypted with ``passphrase`` (best available encryption).

    Raises:
        ValueError: an empty passphrase (keys are never written in the clear).
    """
    if not passphrase:
        raise ValueError("a signing key is never written without a passphrase")
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


# -- key ring -------------------------------------------------------------------------------


class KeyRing:
    """Signs with the current key; verifies with the current and the trusted keys only."""

    def __init__(self, signer: CurrentKey, trusted: Mapping[str, PublicKey] | None = None,
                 revoked: Iterable[str] = ()) -> None:
        # Replaced, never mutated (copy on write): readers on any thread see either the old or
        # the new state, without a lock.
        self._revoked = frozenset(revoked)
        if signer.key_id in self._revoked:
            raise ConfigError(SIGNING_KEY, f"the signing key {signer.key_id} is revoked in the key registry")
        self._signer = signer
        self._trusted = {k: v for k, v in (trusted or {}).items() if k not in self._revoked}
        self._listeners: list[Callable[[CurrentKey], None]] = []

    def add_listener(self, listener: Callable[[CurrentKey], None]) -> None:
        """Call ``listener(new_signer)`` whenever the current key changes."""
        self._listeners.append(listener)

    @property
    def signer(self) -> CurrentKey:
        return self._signer

    def replace_signer(self, signer: CurrentKey) -> None:
        """Make ``signer`` current; the previous current key stays trusted.

        Rotation is done by one administrator request at a time (the caller serialises it).
        """
        previous = self._signer
        self._trusted = {**self._trusted, previous.key_id: previous.public_key}
        self._signer = signer
        for listener in self._listeners:
            listener(signer)

    def public_key(self, kid: str) -> PublicKey:
        """Return the public key of a current or trusted key id.

        Raises:
            UnknownKeyError: the key id is neither current nor trusted (or it was revoked).
        """
        signer = self._signer
        if kid == signer.key_id:
            return signer.public_key
        found = self._trusted.get(kid)
        if found is None:
            raise UnknownKeyError(f"key {kid} is neither the current key nor trusted")
        return found

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        """Verify a signature made by key ``kid``.

        Raises:
            UnknownKeyError: ``kid`` is neither current nor trusted.
            SealInvalidError: the signature does not verify.
        """
        verify_signature(self.public_key(kid), data, signature)

    def public_keys(self) -> dict[str, bytes]:
        """Every key id this ring accepts, with its PEM public key."""
        signer, trusted = self._signer, self._trusted
        keys = {signer.key_id: public_pem(signer.public_key)}
        keys.update({kid: public_pem(pk) for kid, pk in trusted.items() if kid not in keys})
        return keys


class PublicKeyRing:
    """Verifies with the given public keys only (offline tools: no signing key, no passphrase)."""

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        self.keys = dict(keys)

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        """Verify a signature by key ``kid``.

        Raises:
            UnknownKeyError: ``kid`` is not one of the accepted keys.
            SealInvalidError: the signature does not verify.
        """
        public_key = self.keys.get(kid)
        if public_key is None:
            raise UnknownKeyError(f"key {kid} is not a trusted key")
        verify_signature(public_key, data, signature)
