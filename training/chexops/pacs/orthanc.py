"""A throw-away Orthanc on loopback (the tests, the benchmark and `chexops demo --pacs`): a JSON config with a
temporary storage directory, the gateway as its modality `chexops`, and `ChexopsPriority` as user metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chexops.core.errors import UserInputError
from chexops.core.processes import ServerProcess, free_port

INSTALL = "apt-get install -y orthanc orthanc-dicomweb dicom3tools (tests/install-tools.sh does it)"
AET = "ORTHANC"


class LocalOrthanc:
    def __init__(self, root: Path, gateway_aet: str, gateway_port: int):
        if not shutil.which("Orthanc"):
            raise UserInputError(f"Orthanc is not installed: {INSTALL}.")
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "chexops-local",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomModalities": {"chexops": [gateway_aet, "127.0.0.1", gateway_port]},
            "UserMetadata": {"ChexopsPriority": 1024},
            "StableAge": 1,
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.send_to = f"{AET}@127.0.0.1:{self.dicom_port}"
        self.server = ServerProcess(
            ["Orthanc", root / "orthanc.json"], root / "orthanc.log", url=self.url, ready_path="/system", name="Orthanc"
        )

    def __enter__(self) -> "LocalOrthanc":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
