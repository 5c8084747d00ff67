"""The self-signing key registry: a planted, removed or rewritten entry never makes a key trusted."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.errors import KeyRegistryError, UnknownKeyError
from orthanc_hardening.seal import registry
from orthanc_hardening.seal.keys import Signer, public_pem
from orthanc_hardening.stores import key_files
from tests.unit.seal.conftest import NOW

PASS = b"correct horse"


def entries_of(directory):
    return json.loads((directory / "registry.json").read_text())["entries"]


def write_entries(directory, raw):
    (directory / "registry.json").write_text(json.dumps({"version": 2, "entries": raw}))


@pytest.fixture
def keyed(tmp_path):
    """A signing key whose registry went through genesis, one rotation and one revocation."""
    key_path, directory = tmp_path / "etc" / "seal-key.pem", tmp_path / "data" / "keys"
    first = key_files.generate_key(key_path, PASS)
    key_files.load_key_ring(key_path, PASS, directory, (), NOW)  # first start: genesis
    _old, second = key_files.rotate_key(key_path, directory, PASS, NOW)
    _old, third = key_files.rotate_key(key_path, directory, PASS, NOW)
    key_files.revoke_key(key_path, PASS, directory, first.key_id, NOW)
    return key_path, directory, (first, second, third)


def load(keyed):
    key_path, directory, _keys = keyed
    return key_files.load_key_ring(key_path, PASS, directory, (), NOW)


def test_first_start_writes_genesis_and_anchor_outside_data_directory(tmp_path):
    key_path, directory = tmp_path / "etc" / "seal-key.pem", tmp_path / "data" / "keys"
    signer = key_files.generate_key(key_path, PASS)
    ring = key_files.load_key_ring(key_path, PASS, directory, (), NOW)
    assert ring.signer.key_id == signer.key_id
    [genesis] = entries_of(directory)
    assert (genesis["kind"], genesis["key_id"], list(genesis["signatures"])) == ("genesis", signer.key_id,
                                                                                [signer.key_id])
    anchor = json.loads(key_files.anchor_path(key_path).read_text())
    assert key_files.anchor_path(key_path).parent == key_path.parent
    assert (anchor["count"], anchor["key_id"]) == (1, signer.key_id)


def test_rotations_and_revocations_replay_to_the_right_state(keyed):
    _key_path, directory, (first, second, third) = keyed
    ring = load(keyed)
    assert ring.signer.key_id == third.key_id
    ring.verify(second.key_id, b"x", second.sign(b"x"))
    with pytest.raises(UnknownKeyError):
        ring.verify(first.key_id, b"x", first.sign(b"x"))
    kinds = [(e["kind"], e["key_id"], sorted(e["signatures"])) for e in entries_of(directory)]
    assert kinds == [
        ("genesis", first.key_id, [first.key_id]),
        ("rotate", second.key_id, sorted([first.key_id, second.key_id])),  # by the replaced key and the new one
        ("rotate", third.key_id, sorted([second.key_id, third.key_id])),
        ("revoke", first.key_id, [third.key_id]),  # by the key current then
    ]


@pytest.mark.attack
def test_planted_key_appended_to_registry_stops_the_start(keyed):
    _key_path, directory, (_first, _second, third) = keyed
    intruder = Signer.of(ed25519.Ed25519PrivateKey.generate())
    raw = entries_of(directory)
    last = registry.RegistryEntry.from_dict(raw[-1])
    forged = registry.RegistryEntry(2, len(raw), "rotate", intruder.key_id, "ed25519",
                                    public_pem(intruder.public_key).decode(), third.key_id,
                                    "2026-01-02T03:04:05.000000Z", last.entry_hash())
    forged = replace(forged, signatures={intruder.key_id: "AAAA"})
    write_entries(directory, [*raw, forged.as_dict()])
    with pytest.raises(KeyRegistryError, match=f"lacks the signature of key {third.key_id}"):
        load(keyed)


@pytest.mark.attack
def test_planted_key_signed_by_itself_as_new_genesis_stops_the_start(keyed):
    _key_path, directory, (_first, _second, third) = keyed
    intruder = Signer.of(ed25519.Ed25519PrivateKey.generate())
    # The intruder writes a registry of their own: their key first, then "rotated" to the real
    # current key, which they cannot sign for.
    fake = [registry.genesis(intruder, intruder.public_key, NOW)]
    rotation = registry.RegistryEntry(2, 1, "rotate", third.key_id, third.algorithm,
                                      public_pem(third.public_key).decode(), intruder.key_id,
                                      "2026-01-02T03:04:05.000000Z", fake[0].entry_hash())
    data = rotation.signed_bytes()
    import base64

    rotation = replace(rotation, signatures={intruder.key_id: base64.b64encode(intruder.sign(data)).decode()})
    write_entries(directory, [e.as_dict() for e in [*fake, rotation]])
    with pytest.raises(KeyRegistryError, match=f"lacks the signature of key {third.key_id}"):
        load(keyed)


@pytest.mark.attack
def test_edited_revocation_stops_the_start(keyed):
    _key_path, directory, (_first, _second, _third) = keyed
    raw = entries_of(directory)
    raw[-1]["key_id"] = _second.key_id  # revoke another key than the one signed
    write_entries(directory, raw)
    with pytest.raises(KeyRegistryError, match="does not verify"):
        load(keyed)


@pytest.mark.attack
def test_removed_revocation_is_seen_through_the_anchor(keyed):
    _key_path, directory, (_first, _second, _third) = keyed
    write_entries(directory, entries_of(directory)[:-1])  # un-revoke the first key
    with pytest.raises(KeyRegistryError, match="entries were removed"):
        load(keyed)


@pytest.mark.attack
def test_reordered_entries_stop_the_start(keyed):
    _key_path, directory, _keys = keyed
    raw = entries_of(directory)
    raw[1], raw[2] = raw[2], raw[1]
    write_entries(directory, raw)
    with pytest.raises(KeyRegistryError, match="removed or reordered"):
        load(keyed)


@pytest.mark.attack
def test_deleted_registry_stops_the_start(keyed):
    _key_path, directory, _keys = keyed
    (directory / "registry.json").unlink()
    with pytest.raises(KeyRegistryError, match="missing, but its anchor"):
        load(keyed)


@pytest.mark.attack
def test_deleted_anchor_stops_the_start(keyed):
    key_path, _directory, _keys = keyed
    key_files.anchor_path(key_path).unlink()
    with pytest.raises(KeyRegistryError, match=r"anchor .* is missing"):
        load(keyed)


@pytest.mark.attack
def test_anchor_signed_by_intruder_stops_the_start(keyed):
    key_path, _directory, (_first, _second, _third) = keyed
    path = key_files.anchor_path(key_path)
    anchor = json.loads(path.read_text())
    anchor["count"] = 3  # pretend the revocation never happened …
    path.write_text(json.dumps(anchor))  # … with the old signature
    with pytest.raises(KeyRegistryError, match="signature does not verify"):
        load(keyed)


@pytest.mark.attack
def test_replaced_signing_key_does_not_inherit_the_registry(keyed):
    key_path, _directory, _keys = keyed
    key_files.generate_key(key_path, PASS, overwrite=True)  # an intruder's key with the same passphrase
    with pytest.raises(KeyRegistryError, match="current key is"):
        load(keyed)


def test_unsigned_first_format_is_replaced_only_when_it_lists_the_signing_key_alone(tmp_path):
    key_path, directory = tmp_path / "seal-key.pem", tmp_path / "keys"
    signer = key_files.generate_key(key_path, PASS)
    directory.mkdir()
    old = {"version": 1, "keys": [{"key_id": signer.key_id}]}
    (directory / "registry.json").write_text(json.dumps(old))
    assert key_files.load_key_ring(key_path, PASS, directory, (), NOW).signer.key_id == signer.key_id
    assert entries_of(directory)[0]["kind"] == "genesis"
    key_files.anchor_path(key_path).unlink()
    old["keys"].append({"key_id": "0123456789abcdef"})
    (directory / "registry.json").write_text(json.dumps(old))
    with pytest.raises(KeyRegistryError, match="unsigned first format"):
        key_files.load_key_ring(key_path, PASS, directory, (), NOW)


def test_rotation_interrupted_before_the_key_file_is_finished_at_start(tmp_path):
    key_path, directory = tmp_path / "seal-key.pem", tmp_path / "keys"
    old = key_files.generate_key(key_path, PASS)
    key_files.load_key_ring(key_path, PASS, directory, (), NOW)
    entries = [registry.RegistryEntry.from_dict(e) for e in entries_of(directory)]
    pending = key_files.generate_key(tmp_path / "seal-key.pem.pending", PASS)
    entries.append(registry.rotation(entries, old, pending, pending.public_key, NOW))
    key_files.write_registry(directory, entries)  # the crash: key file and anchor not yet written
    ring = key_files.load_key_ring(key_path, PASS, directory, (), NOW)
    assert ring.signer.key_id == pending.key_id
    assert not (tmp_path / "seal-key.pem.pending").exists()
    assert json.loads(key_files.anchor_path(key_path).read_text())["count"] == 2


def test_rotation_interrupted_before_the_registry_is_undone_at_start(tmp_path):
    key_path, directory = tmp_path / "seal-key.pem", tmp_path / "keys"
    old = key_files.generate_key(key_path, PASS)
    key_files.load_key_ring(key_path, PASS, directory, (), NOW)
    key_files.generate_key(tmp_path / "seal-key.pem.pending", PASS)
    assert key_files.load_key_ring(key_path, PASS, directory, (), NOW).signer.key_id == old.key_id
    assert not (tmp_path / "seal-key.pem.pending").exists()


def test_offline_ring_needs_the_anchor(keyed):
    key_path, directory, (_first, second, third) = keyed
    ring = key_files.load_public_key_ring(key_path, directory, ())
    assert set(ring.keys) == {second.key_id, third.key_id}
    key_files.anchor_path(key_path).unlink()
    with pytest.raises(KeyRegistryError, match="must both exist"):
        key_files.load_public_key_ring(key_path, directory, ())


def test_misuse_is_a_value_error(keyed):
    _key_path, _directory, (first, second, _third) = keyed
    with pytest.raises(ValueError, match="genesis"):
        registry.rotation([], first, second, second.public_key, NOW)
    state = registry.inspect_registry([registry.genesis(first, first.public_key, NOW)])
    with pytest.raises(ValueError, match="current key"):
        registry.anchor_of(state, second, NOW)
