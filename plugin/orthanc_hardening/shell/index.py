"""Orthanc's index through the plugin's ``orthanc.RestApiGet`` (index queries, never a job)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from orthanc_hardening.integrity.scrub import IndexedInstance

DICOM = 1


class RestIndex:
    """Orthanc's index through the plugin's ``orthanc.RestApiGet`` (index queries only)."""

    def __init__(self, orthanc: Any) -> None:
        self.orthanc = orthanc

    def _get(self, uri: str) -> Any:
        return json.loads(self.orthanc.RestApiGet(uri))

    def _instance(self, item: dict[str, Any], study_id: str, series_uid: str) -> IndexedInstance:
        instance_id = str(item["ID"])
        attachments: dict[int, str] = {}
        if item.get("FileUuid"):
            attachments[DICOM] = str(item["FileUuid"])
        listed = self._get(f"/instances/{instance_id}/attachments?full")
        for name, content_type in listed.items():
            if int(content_type) == DICOM and DICOM in attachments:
                continue
            attachments[int(content_type)] = str(self._get(f"/instances/{instance_id}/attachments/{name}/info")["Uuid"])
        sop = str((item.get("MainDicomTags") or {}).get("SOPInstanceUID", ""))
        return IndexedInstance(instance_id, study_id, series_uid, sop, attachments)

    def study_instances(self, study_id: str) -> list[IndexedInstance] | None:
        try:
            series_list = self._get(f"/studies/{study_id}/series")
        except Exception:
            return None
        found = []
        for series in series_list:
            series_uid = str((series.get("MainDicomTags") or {}).get("SeriesInstanceUID", ""))
            for item in self._get(f"/series/{series['ID']}/instances"):
                found.append(self._instance(item, study_id, series_uid))
        return found

    def instances(self) -> Iterator[IndexedInstance]:
        for study_id in self._get("/studies"):
            yield from self.study_instances(str(study_id)) or []
