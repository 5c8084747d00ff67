"""Signing keys in a PKCS#11 token (SoftHSM): seals, checkpoints and registry entries are signed
inside the token, rotation makes the new key there, and the private key is never extractable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orthanc_hardening.cli import main
from orthanc_hardening.config import load_config
from orthanc_hardening.errors import ConfigError, UnknownKeyError
from orthanc_hardening.stores import key_files
from orthanc_hardening.stores.token_keys import Token, TokenURI
from tests.support.softhsm import SoftHSM, make_softhsm
from tests.unit.seal.conftest import NOW

pkcs11 = pytest.importorskip("pkcs11")


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory):
    # SoftHSM reads SOFTHSM2_CONF when the module is first initialised in this process.
    made = make_softhsm(tmp_path_factory.mktemp("softhsm"))
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(made.conf)
    yield made
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


def make_token_key(hsm: SoftHSM, name: str, monkeypatch, capsys) -> str:
    monkeypatch.setenv("HARDENING_KEY_PASSPHRASE", hsm.pin)
    assert main(["keys", "generate", "--out", hsm.uri(name)]) == 0
    return str(json.loads(capsys.readouterr().out)["key_id"])


def test_token_key_signs_the_registry_and_never_leaves_the_token(hsm, tmp_path, monkeypatch, capsys):
    kid = make_token_key(hsm, "seal-a", monkeypatch, capsys)
    anchor, directory = tmp_path / "etc" / "anchor.json", tmp_path / "data" / "keys"
    ring = key_files.load_key_ring(Path(hsm.uri("seal-a")), hsm.pin.encode(), directory, (), NOW, anchor)
    assert ring.signer.key_id == kid
    ring.verify(kid, b"seal bytes", ring.signer.sign(b"seal bytes"))  # signed inside the token
    [genesis] = json.loads((directory / "registry.json").read_text())["entries"]
    assert list(genesis["signatures"]) == [kid] and json.loads(anchor.read_text())["key_id"] == kid
    assert sorted(p.name for p in directory.iterdir()) == ["registry.json"]  # no key file anywhere
    token = Token.open(hsm.uri("seal-a"), hsm.pin.encode())
    from pkcs11 import Attribute, ObjectClass

    [private] = list(token.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                Attribute.ID: bytes.fromhex(kid)}))
    assert private[Attribute.EXTRACTABLE] is False and private[Attribute.SENSITIVE] is True
    # The second generate on the same label is refused.
    assert main(["keys", "generate", "--out", hsm.uri("seal-a")]) == 2


def test_rotation_makes_the_new_key_in_the_token_signed_by_both(hsm, tmp_path, monkeypatch, capsys):
    first = make_token_key(hsm, "seal-b", monkeypatch, capsys)
    uri, anchor, directory = Path(hsm.uri("seal-b")), tmp_path / "anchor.json", tmp_path / "keys"
    key_files.load_key_ring(uri, hsm.pin.encode(), directory, (), NOW, anchor)
    old, new = key_files.rotate_key(uri, directory, hsm.pin.encode(), NOW, anchor_file=anchor)
    assert old.key_id == first and new.key_id != first
    rotation = json.loads((directory / "registry.json").read_text())["entries"][-1]
    assert sorted(rotation["signatures"]) == sorted([first, new.key_id])
    # After a restart the registry's current key is found in the token by its id.
    ring = key_files.load_key_ring(uri, hsm.pin.encode(), directory, (), NOW, anchor)
    assert ring.signer.key_id == new.key_id
    ring.verify(first, b"x", old.sign(b"x"))
    key_files.revoke_key(uri, hsm.pin.encode(), directory, first, NOW, anchor)
    ring = key_files.load_key_ring(uri, hsm.pin.encode(), directory, (), NOW, anchor)
    with pytest.raises(UnknownKeyError):
        ring.verify(first, b"x", old.sign(b"x"))


def test_wrong_pin_and_unknown_object_are_config_errors(hsm, tmp_path, monkeypatch, capsys):
    make_token_key(hsm, "seal-c", monkeypatch, capsys)
    with pytest.raises(ConfigError) as caught:
        key_files.load_key_ring(Path(hsm.uri("seal-c")), b"0000", tmp_path / "k", (), NOW, tmp_path / "a.json")
    assert caught.value.key == "Hardening.SigningKey"
    with pytest.raises(ConfigError, match="holds no Ed25519 key pair labelled 'nothing'"):
        key_files.load_key_ring(Path(hsm.uri("nothing")), hsm.pin.encode(), tmp_path / "k", (), NOW,
                                tmp_path / "a.json")


def test_uri_and_configuration_rules(tmp_path):
    parsed = TokenURI.parse("pkcs11:token=my%20hsm;object=seal?module-path=/usr/lib/x.so")
    assert (parsed.token, parsed.object, parsed.module_path) == ("my hsm", "seal", "/usr/lib/x.so")
    with pytest.raises(ConfigError, match="lacks module-path"):
        TokenURI.parse("pkcs11:token=a;object=b")
    section = {"DataDirectory": str(tmp_path / "data"), "SigningKey": "pkcs11:token=a;object=b?module-path=/x.so"}
    with pytest.raises(ConfigError) as caught:
        load_config({"Hardening": section})
    assert caught.value.key == "Hardening.KeyRegistryAnchor"
    with pytest.raises(ConfigError, match="outside DataDirectory"):
        load_config({"Hardening": {**section, "KeyRegistryAnchor": str(tmp_path / "data" / "anchor.json")}})
    config = load_config({"Hardening": {**section, "KeyRegistryAnchor": str(tmp_path / "anchor.json")}})
    assert config.signing_key_in_token and config.key_registry_anchor == tmp_path / "anchor.json"
