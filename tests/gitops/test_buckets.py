"""Every S3 bucket that something names (a workflow's s3://BUCKET, the artifact repository's or a
chart's `bucket:`, a default in the code or configs) is one the platform's MinIO creates."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .render import REPO

# A real bucket name (lower case: s3://BUCKET placeholders in help texts are not one).
BUCKET = r"([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\b"
S3_URL = re.compile(r"s3://" + BUCKET)
FIELD = {  # a `bucket:` field in YAML; a quoted bucket default in Python
    ".yaml": re.compile(r"(?m)^\s*bucket:\s*[\"']?" + BUCKET),
    ".yml": re.compile(r"(?m)^\s*bucket:\s*[\"']?" + BUCKET),
    ".py": re.compile(r"\bbucket\w*\s*[:=]\s*(?:str\s*=\s*)?[\"']" + BUCKET + "[\"']", re.IGNORECASE),
}
WHERE = [("workflows", "*.yaml"), ("argocd", "*.yaml"), ("k8s", "*.yaml"), ("training/chexops", "*.py")]
WHERE += [("configs", "*.yaml"), ("configs", "*.yml")]


def named_buckets(files: list[Path]) -> dict[str, set[str]]:
    """bucket -> the files (relative to the repository) that name it."""
    out: dict[str, set[str]] = {}
    for path in files:
        for pattern in (S3_URL, FIELD[path.suffix]):
            for bucket in pattern.findall(path.read_text(errors="replace")):
                out.setdefault(bucket, set()).add(str(path.relative_to(REPO)))
    return out


def created_buckets() -> set[str]:
    (minio,) = [d for d in yaml.safe_load_all((REPO / "argocd" / "platform" / "minio.yaml").read_text()) if d]
    return {b["name"] for b in minio["spec"]["source"]["helm"]["valuesObject"]["buckets"]}


def test_every_named_bucket_is_created_by_minio():
    files = [p for root, glob in WHERE if (REPO / root).is_dir() for p in (REPO / root).rglob(glob)]
    named = named_buckets(files)
    assert {"chexops-artifacts", "chexops-data", "mlflow"} <= set(named), named  # the parser finds them
    missing = {b: sorted(f) for b, f in named.items() if b not in created_buckets()}
    assert not missing, f"named but never created by MinIO (argocd/platform/minio.yaml buckets): {missing}"


def test_the_parser_finds_a_bucket_in_each_form(tmp_path, monkeypatch):
    created = created_buckets()
    monkeypatch.setattr("gitops.test_buckets.REPO", tmp_path)
    (tmp_path / "a.yaml").write_text("value: s3://new-bucket/raw\ns3:\n  bucket: logs-2\n")
    (tmp_path / "b.py").write_text('DEFAULT = "s3://py-default/x"\nclient.put_object(Bucket=bucket, Key=k)\n')
    (tmp_path / "c.py").write_text('help="a folder or s3://BUCKET/PREFIX"\nBUCKET: str = "kw-bucket"\nraise x\n')
    found = named_buckets(sorted(tmp_path.glob("*.*")))
    assert set(found) == {"new-bucket", "logs-2", "py-default", "kw-bucket"}
    assert not set(found) & created
