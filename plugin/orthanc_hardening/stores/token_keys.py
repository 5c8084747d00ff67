"""Signing keys in a PKCS#11 token (an HSM in production, SoftHSM in the tests).

``Hardening.SigningKey`` may be an RFC 7512 PKCS#11 URI instead of a file::

    pkcs11:token=hardening;object=seal-key?module-path=/usr/lib/softhsm/libsofthsm2.so

The PIN is read from ``SigningKeyPassphraseEnv`` (once, at start). The private key never leaves
the token: ``TokenSigner.sign`` asks the token (Ed25519, ``CKM_EDDSA``). Rotation generates the
new key pair inside the token, labelled ``<object>.<key id>`` with ``CKA_ID`` = the key id; the
signed key registry says which key is current, so a restart finds it by its id. One session
per process, used under a lock (PKCS#11 sessions are not for concurrent use).

I/O: loads the token's PKCS#11 module (python-pkcs11).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.errors import ConfigError
from orthanc_hardening.seal.keys import SIGNING_KEY, PublicKey, key_id

SCHEME = "pkcs11:"
_ED25519_OID = "1.3.101.112"
_OPEN: dict[tuple[str, str, str], Any] = {}  # (module, token, PIN digest) -> (session, lock)
_OPEN_LOCK = threading.Lock()


def is_token_uri(value: object) -> bool:
    """Whether ``Hardening.SigningKey`` names a key in a PKCS#11 token."""
    return str(value).startswith(SCHEME)


@dataclass(frozen=True, slots=True)
class TokenURI:
    """The parts of a PKCS#11 URI the plugin uses (RFC 7512 §2.3)."""

    module_path: str
    token: str
    object: str

    @classmethod
    def parse(cls, uri: str) -> TokenURI:
        """Parse ``pkcs11:token=…;object=…?module-path=…``.

        Raises:
            ConfigError: (key ``Hardening.SigningKey``) not such a URI, or a part is missing.
        """
        if not is_token_uri(uri):
            raise ConfigError(SIGNING_KEY, "a PKCS#11 key is named by a pkcs11: URI")
        path, _, query = uri[len(SCHEME):].partition("?")
        attributes = dict(part.split("=", 1) for part in path.split(";") if "=" in part)
        queries = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        found = {"token": unquote(attributes.get("token", "")), "object": unquote(attributes.get("object", "")),
                 "module-path": unquote(queries.get("module-path", ""))}
        missing = [name for name, value in found.items() if not value]
        if missing:
            raise ConfigError(SIGNING_KEY, f"the PKCS#11 URI lacks {', '.join(missing)} "
                                           "(pkcs11:token=…;object=…?module-path=…)")
        return cls(found["module-path"], found["token"], found["object"])


class TokenSigner:
    """A private key inside the token: ``key_id``, ``algorithm``, ``public_key``, ``sign``."""

    algorithm = "ed25519"

    def __init__(self, session: Any, private_key: Any, public_key: PublicKey, lock: threading.Lock) -> None:
        self._session = session
        self._private = private_key
        self._public = public_key
        self._lock = lock
        self.key_id = key_id(public_key)

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` inside the token (``CKM_EDDSA``, Ed25519)."""
        import pkcs11

        with self._lock:
            return bytes(self._private.sign(data, mechanism=pkcs11.Mechanism.EDDSA))

    def __repr__(self) -> str:
        return f"TokenSigner(key_id={self.key_id!r})"


@dataclass
class Token:
    """An open session on the token named by a URI."""

    uri: TokenURI
    session: Any
    lock: threading.Lock

    @classmethod
    def open(cls, uri: str, pin: bytes | None) -> Token:
        """Open (once per process) a read-write session, logged in with ``pin``.

        Raises:
            ConfigError: (key ``Hardening.SigningKey``) python-pkcs11 or the module is missing, the
                token is not found, or the PIN is wrong.
        """
        parsed = TokenURI.parse(uri)
        if not pin:
            raise ConfigError(SIGNING_KEY, "the PKCS#11 token's PIN is not set in the environment")
        try:
            import pkcs11
        except ImportError as exc:
            raise ConfigError(SIGNING_KEY, "python-pkcs11 is not installed: PKCS#11 keys unavailable") from exc
        # Keyed by the PIN's digest too: a session opened with the right PIN is never handed to
        # a caller with another one.
        cache_key = (parsed.module_path, parsed.token, hashlib.sha256(pin).hexdigest())
        with _OPEN_LOCK:
            cached = _OPEN.get(cache_key)
            if cached is None:
                try:
                    library = pkcs11.lib(parsed.module_path)
                    token = library.get_token(token_label=parsed.token)
                    cached = (token.open(user_pin=pin.decode("utf-8"), rw=True), threading.Lock())
                except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
                    raise ConfigError(SIGNING_KEY, f"cannot open PKCS#11 token {parsed.token!r} with "
                                                   f"{parsed.module_path}: {type(exc).__name__}") from exc
                _OPEN[cache_key] = cached
        return cls(parsed, cached[0], cached[1])

    def _pair(self, template: dict[Any, Any]) -> TokenSigner | None:
        from pkcs11 import Attribute, ObjectClass

        with self.lock:
            privates = list(self.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, **template}))
            publics = list(self.session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, **template}))
        if not privates or not publics:
            return None
        if len(privates) > 1 or len(publics) > 1:
            raise ConfigError(SIGNING_KEY, "the token holds several key pairs with the same label or id")
        point = bytes(publics[0][Attribute.EC_POINT])
        raw = point[2:] if len(point) == 34 and point[0] == 0x04 else point  # DER OCTET STRING of 32 bytes
        try:
            public_key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise ConfigError(SIGNING_KEY, "the token's key is not an Ed25519 key") from exc
        return TokenSigner(self.session, privates[0], public_key, self.lock)

    def signer(self, kid: str | None = None) -> TokenSigner:
        """The key pair with ``CKA_ID`` = ``kid`` (a rotated key), or the URI's ``object`` label.

        Raises:
            ConfigError: no such key pair in the token.
        """
        from pkcs11 import Attribute

        if kid:
            found = self._pair({Attribute.ID: bytes.fromhex(kid)})
            if found is not None:
                return found
        found = self._pair({Attribute.LABEL: self.uri.object})
        if found is None:
            raise ConfigError(SIGNING_KEY, f"the token {self.uri.token!r} holds no Ed25519 key pair labelled "
                                           f"{self.uri.object!r}" + (f" or with id {kid}" if kid else ""))
        return found

    def generate(self, label: str | None = None) -> TokenSigner:
        """Generate a new Ed25519 key pair inside the token; label it ``<label or object>.<key id>``.

        Raises:
            ConfigError: the token cannot generate the key.
        """
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism
        from pkcs11.util.ec import encode_named_curve_parameters

        with self.lock:
            try:
                parameters = self.session.create_domain_parameters(
                    KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)},
                    local=True)
                # Sensitive and never extractable: the private key cannot leave the token.
                public, private = parameters.generate_keypair(
                    mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, store=True, label=label or self.uri.object,
                    private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                      Attribute.SIGN: True})
            except pkcs11.PKCS11Error as exc:
                raise ConfigError(SIGNING_KEY, f"the token cannot generate an Ed25519 key: "
                                               f"{type(exc).__name__}") from exc
            point = bytes(public[Attribute.EC_POINT])
        raw = point[2:] if len(point) == 34 and point[0] == 0x04 else point
        kid = key_id(ed25519.Ed25519PublicKey.from_public_bytes(raw))
        with self.lock:
            for item in (public, private):
                item[Attribute.ID] = bytes.fromhex(kid)
                if label is None:
                    item[Attribute.LABEL] = f"{self.uri.object}.{kid}"
        return self.signer(kid)
