"""The sealed-tag catalogue: the index tags of every sealed instance, read once from its verified
bytes, kept in memory (``integrity.query.SealedTagIndex``) and in the tag store.

It follows the seal store by row id (``refresh``): a new seal's tags come from the storage
create that just parsed them (no second parse), from the tag store after a restart (re-checked
against the seal's signed digest), or from the file itself (hash + seal + signature first).
Thread-safe.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from orthanc_hardening.config import Mode, UnsealedPolicy
from orthanc_hardening.errors import HardeningError
from orthanc_hardening.integrity.query import FilteredAnswer, SealedTagIndex, filter_answer, sealed_instance_tags
from orthanc_hardening.seal.identity import identity_of_dataset, parse_dataset
from orthanc_hardening.seal.index_tags import IndexTags
from orthanc_hardening.seal.keys import Verifier
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.record import Seal, verify_seal
from orthanc_hardening.stores.attachment_files import read_file
from orthanc_hardening.stores.seal_store import SealReader
from orthanc_hardening.stores.signature_cache import SignatureCache
from orthanc_hardening.stores.tag_store import SQLiteTagStore

logger = logging.getLogger(__name__)

DICOM = 1


class SealedTagCatalogue:
    """The sealed index tags of every sealed instance (see the module docstring)."""

    def __init__(self, seals: SealReader, tags: SQLiteTagStore, root: Path, keyring: Verifier,
                 cache: SignatureCache, just_parsed: Callable[[Seal], IndexTags | None]) -> None:
        self.index = SealedTagIndex()
        self.lock = threading.RLock()
        self._seals = seals
        self._tags = tags
        self._root = root
        self._cache = cache
        self._verifier = cache.verifier_for(keyring)
        self._just_parsed = just_parsed
        self._last_rowid = 0

    def __len__(self) -> int:
        return len(self.index)

    def refresh(self) -> None:
        """Add the tags of seals stored since the last refresh (reads new files once).

        The tags of the new seals go to the tag store in one transaction at the end (a failure
        to store them is logged: the store is a cache, the entries indexed here stand).

        Raises:
            StoreUnavailableError: the seal store or the tag store cannot be read.
        """
        with self.lock:
            to_store: list[tuple[str, str, IndexTags]] = []
            try:
                for rowid, record in self._seals.stored_after(self._last_rowid, DICOM):
                    self._last_rowid = max(self._last_rowid, rowid)
                    try:
                        # The seal the create just stored is in the cache as these exact bytes: no parse.
                        seal = self._cache.parse_seal(record)
                        if seal.index_tags_sha256:
                            self._add(seal, to_store)
                    except (HardeningError, ValueError, OSError) as exc:
                        # A seal whose file or tags do not verify: its resources stay unknown here
                        # (reported as unsealed), the storage read and the scrub report the damage.
                        logger.warning("sealed tags of attachment %s not indexed: %s", _uuid_of(record), exc)
            finally:
                if to_store:
                    self._store(to_store)

    def _store(self, entries: list[tuple[str, str, IndexTags]]) -> None:
        try:
            self._tags.put_many(entries)
        except HardeningError as exc:
            logger.warning("sealed tags of %d instances not kept in the tag store: %s", len(entries), exc)

    def _add(self, seal: Seal, to_store: list[tuple[str, str, IndexTags]]) -> None:
        """Index one seal's tags: those its create just parsed (checked against its digest), else
        the stored copy, else its verified file; new ones are added to ``to_store``."""
        tags = self._just_parsed(seal)
        stored = None if tags is not None else self._tags.get(seal.uuid)
        if tags is None:
            tags = stored
        if tags is None:
            data = read_file(attachment_path(self._root, seal.uuid))
            verify_seal(seal, data, seal.uuid, self._verifier)
            _identity, tags = identity_of_dataset(parse_dataset(data))
        else:
            self._verifier.verify(seal.key_id, seal.signed_bytes(), seal.signature_bytes)
        entry = sealed_instance_tags(seal, tags)
        if stored is None:
            to_store.append((seal.uuid, entry.instance_id, tags))
        self.index.add(entry)

    def forget(self, instance_id: str) -> None:
        """Forget a deleted instance."""
        with self.lock:
            self.index.remove(instance_id)

    def filter(self, items: Iterable[Mapping[str, Any]], mode: Mode, policy: UnsealedPolicy,
               level: str | None = None) -> FilteredAnswer:
        """Refresh, then filter an answer (see ``integrity.query.filter_answer``).

        Raises:
            StoreUnavailableError: the seal store cannot be read.
        """
        with self.lock:
            self.refresh()
            return filter_answer(items, self.index, mode, policy, level)


def _uuid_of(record: bytes) -> str:
    try:
        return str(json.loads(record).get("uuid", "?"))
    except ValueError:
        return "?"
