"""``devsetup`` for a node of a shared archive: joining a node home, the generated configuration, the checks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509

from orthanc_hardening.commands import devnode
from orthanc_hardening.commands.devsetup import DevFiles, setup
from orthanc_hardening.commands.posture import strip_comments

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
REPO_ORTHANC_JSON = Path(__file__).resolve().parents[2] / "orthanc.json"


def first_node(tmp_path: Path) -> DevFiles:
    return setup(tmp_path / "node-a", 9443, 9242, "NODEA", NOW)


def test_joining_node_takes_the_trust_and_issues_its_own_server_certificate(tmp_path: Path) -> None:
    a = first_node(tmp_path)
    b = DevFiles(tmp_path / "node-b")
    copied = devnode.join_home(a.home, b.home)
    assert set(copied) >= {"tls/ca.pem", "tls/ca.key", "keys/seal-key.pem", "keys/passphrase", "credentials.json"}
    setup(b.home, 9444, 9243, "NODEB", NOW)
    for shared in (a.ca_cert, a.client_cert, a.signing_key, a.passphrase_file, a.credentials):
        assert (b.home / shared.relative_to(a.home)).read_bytes() == shared.read_bytes(), shared
    # Its own server certificate and key, issued by the shared CA.
    assert b.server_key.read_bytes() != a.server_key.read_bytes()
    ca = x509.load_pem_x509_certificate(a.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(b.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_joining_twice_is_a_no_op(tmp_path: Path) -> None:
    a = first_node(tmp_path)
    b = tmp_path / "node-b"
    devnode.join_home(a.home, b)
    assert devnode.join_home(a.home, b) == []


def test_join_of_a_directory_that_is_not_a_node_home_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit, match=r"HARDENING_JOIN=.*random is not the home of a node \(missing tls/ca.pem"):
        devnode.join_home(tmp_path / "random", tmp_path / "node-b")


def test_join_of_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"HARDENING_JOIN=.*nowhere: no such directory"):
        devnode.join_home(tmp_path / "nowhere", tmp_path / "node-b")


def test_join_of_its_own_home_is_refused(tmp_path: Path) -> None:
    a = first_node(tmp_path)
    with pytest.raises(SystemExit, match="is this node's own HARDENING_HOME"):
        devnode.join_home(a.home, a.home)


def test_home_with_its_own_ca_cannot_join(tmp_path: Path) -> None:
    a = first_node(tmp_path)
    b = setup(tmp_path / "node-b", 9444, 9243, "NODEB", NOW)
    with pytest.raises(SystemExit, match=r"already has its own tls/ca.pem.*a node joins with a fresh HARDENING_HOME"):
        devnode.join_home(a.home, b.home)


def test_node_configuration_moves_the_index_to_postgresql_and_the_files_to_the_shared_folder() -> None:
    base = json.loads(strip_comments(REPO_ORTHANC_JSON.read_text()))
    config = devnode.node_configuration(REPO_ORTHANC_JSON.read_text(), "postgresql://o@db:5432/archive", Path("/srv/s"))
    assert config["Plugins"] == [*base["Plugins"], devnode.POSTGRESQL_INDEX_PLUGIN]
    assert config["StorageDirectory"] == "/srv/s"
    section = config["PostgreSQL"]
    # Orthanc's index only, never its storage (it would bypass the sealed storage area); no
    # lock, so that several Orthanc share the index.
    assert (section["EnableIndex"], section["EnableStorage"], section["Lock"]) == (True, False, False)
    assert section["ConnectionUri"] == "postgresql://o@db:5432/archive"
    # The plugin's stores and the audit trail in the same database.
    assert config["Hardening"]["Database"] == config["Hardening"]["Audit"]["Database"] == section["ConnectionUri"]
    # Everything else is the repository's configuration, ${VAR} references left to Orthanc.
    changed = ("Plugins", "StorageDirectory", "PostgreSQL", "Hardening")
    assert {k: v for k, v in config.items() if k not in changed} == {k: v for k, v in base.items() if k not in changed}
    assert {k: v for k, v in config["Hardening"].items() if k not in ("Database", "Audit")} == {
        k: v for k, v in base["Hardening"].items() if k not in ("Database", "Audit")
    }
    assert config["SslCertificate"] == "${HARDENING_HOME}/tls/server.pem"


def test_generated_configuration_replaces_the_link_without_writing_through_it(tmp_path: Path) -> None:
    original = tmp_path / "repo-orthanc.json"
    original.write_text('{"Name": "repo"}')
    link = tmp_path / "config" / "orthanc.json"
    link.parent.mkdir()
    link.symlink_to(original)
    devnode.write_node_configuration(link, {"Name": "node"})
    assert original.read_text() == '{"Name": "repo"}'
    assert not link.is_symlink()
    assert json.loads(strip_comments(link.read_text())) == {"Name": "node"}
    assert link.stat().st_mode & 0o777 == 0o600


def test_unwritable_storage_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match=r"HARDENING_STORAGE=.*file/storage: the storage folder is not writable"):
        devnode.check_storage(blocker / "storage")


def test_url_that_is_not_libpq_is_refused() -> None:
    with pytest.raises(SystemExit, match=r"HARDENING_POSTGRES=mysql://x: expected a libpq URL"):
        devnode.check_postgres("mysql://x")


def test_unreachable_postgres_is_refused_without_its_password() -> None:
    expected = r"HARDENING_POSTGRES=postgresql://o:\*\*\*@127.0.0.1:1/db: PostgreSQL unreachable"
    with pytest.raises(SystemExit, match=expected) as caught:
        devnode.check_postgres("postgresql://o:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(caught.value)


def test_join_without_postgres_is_refused(tmp_path: Path) -> None:
    from orthanc_hardening.cli import main

    a = first_node(tmp_path)
    with pytest.raises(SystemExit, match="HARDENING_JOIN needs HARDENING_POSTGRES"):
        main(["devsetup", "--home", str(tmp_path / "node-b"), "--join", str(a.home)])
