"""`chexops s3-credentials`: S3 credentials for boto3 from a mounted Kubernetes Secret.

In the cluster the Secret `mlflow-s3-credentials` (keys `access-key-id`, `secret-access-key`) is
mounted as files, and the image's AWS config (`training/aws-config`, `AWS_CONFIG_FILE`) names this
command as boto3's `credential_process`: MLflow's artifact client and `chexops data prepare` read
the credentials from the files when they need them, and no credential travels through environment
variables, the workflow YAML or the image.
"""

from __future__ import annotations

import os
from pathlib import Path

from chexops.core.files import read_secret_file

DEFAULT_DIR = "/var/run/secrets/chexops/s3"
FILES = {"AccessKeyId": "access-key-id", "SecretAccessKey": "secret-access-key"}


def read_credentials(directory: str | os.PathLike) -> dict[str, object]:
    """The credential_process document (version 1) from the Secret's files in `directory`."""
    doc: dict[str, object] = {"Version": 1}
    for field, name in FILES.items():
        doc[field] = read_secret_file(Path(directory) / name, "the S3 credential file")
    return doc
