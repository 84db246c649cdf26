"""`chexops data ingest` against a real S3 server (moto's server mode): a folder into the bucket the
pipelines read, interrupted and resumed, a pre-seeded bucket with a changed object, the copy back to a
node's cache (multipart ETags included), and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chexops.data.ingest import ingest
from chexops.data.prepare import Location
from support import moto_s3, run_cli

FILES = 24


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server with the pipelines' bucket and a stand-in for the Swift container, whose credentials are
    profile `swift` (the default ones come from the Secret's files, as in the cluster)."""
    swift = "[profile swift]\naws_access_key_id = ec2-access\naws_secret_access_key = ec2-secret\n"
    with moto_s3(tmp_path_factory.mktemp("s3"), ["chexops-data", "swift-data"], swift) as server:
        yield server


def make_tree(root: Path, n: int = FILES) -> dict[str, bytes]:
    """A CheXpert-shaped tree: a CSV and n images of differing sizes."""
    files = {"CheXpert-v1.0-small/train.csv": b"Path,Sex\n" + b"".join(b"p%d.jpg,F\n" % i for i in range(n))}
    for i in range(n):
        files[f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"] = os.urandom(1000 + 37 * i)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def keys(client, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) :]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def ingest_json(*args: str, code: int = 0) -> dict:
    result = run_cli("data", "ingest", *args, "--json")
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout) if code == 0 else {"stderr": result.stderr}


class Interrupt(Exception):
    pass


def test_an_interrupted_ingest_resumes_with_exactly_what_is_missing(s3, tmp_path):
    files = make_tree(tmp_path / "src")
    dest = Location("s3://chexops-data/raw/interrupted")
    sent_first: list[str] = []

    def stop_after_five(rel: str) -> None:
        sent_first.append(rel)
        if len(sent_first) == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        ingest(Location(str(tmp_path / "src")), dest, workers=2, on_sent=stop_after_five)
    there = set(keys(s3["client"], "chexops-data", "raw/interrupted/"))
    assert 5 <= len(there) < len(files)  # stopped part-way; each object whole or absent
    sent_again: list[str] = []
    summary = ingest(Location(str(tmp_path / "src")), dest, workers=2, on_sent=sent_again.append)
    assert set(sent_again) == set(files) - there
    assert (summary.sent, summary.missing, summary.changed) == (len(files) - len(there),) * 2 + (0,)
    assert keys(s3["client"], "chexops-data", "raw/interrupted/") == files
    assert ingest(Location(str(tmp_path / "src")), dest).sent == 0


def test_the_cli_sends_only_missing_and_changed_objects(s3, tmp_path):
    files = make_tree(tmp_path / "src")
    client, names = s3["client"], sorted(files)
    seeded, changed = names[: len(names) // 2], names[1]
    for rel in seeded:  # half already there, marked so that a re-sent object shows (a PUT drops the metadata)
        body = files[rel][:-1] + b"X" if rel == changed else files[rel]
        client.put_object(Bucket="chexops-data", Key=f"raw/cli/{rel}", Body=body, Metadata={"seeded": "1"})
    same_size = names[2]  # same size, other content: only the ETag tells
    client.put_object(Bucket="chexops-data", Key=f"raw/cli/{same_size}", Body=bytes(len(files[same_size])),
                      Metadata={"seeded": "1"})
    out = ingest_json("--source", str(tmp_path / "src"), "--dest", "s3://chexops-data/raw/cli")
    assert out["objects"] == len(files) and out["unchanged"] == len(seeded) - 2
    assert (out["missing"], out["changed"], out["sent"]) == (len(files) - len(seeded), 2, len(files) - len(seeded) + 2)
    assert out["bytes_sent"] == sum(len(files[r]) for r in names if r not in seeded or r in (changed, same_size))
    for rel in names:
        meta = client.head_object(Bucket="chexops-data", Key=f"raw/cli/{rel}")["Metadata"]
        resent = rel not in seeded or rel in (changed, same_size)
        assert ("seeded" not in meta) == resent, rel
    assert keys(client, "chexops-data", "raw/cli/") == files


def test_from_the_swift_container_to_minio_and_back_to_a_node_cache(s3, tmp_path):
    """S3 to S3 with the source's own profile, then S3 to a folder; a multipart object's ETag is matched locally."""
    client = s3["client"]
    files = make_tree(tmp_path / "src", n=4)
    big = tmp_path / "src/CheXpert-v1.0-small/big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # over boto3's 8 MiB threshold: a multipart upload
    files[big.relative_to(tmp_path / "src").as_posix()] = big.read_bytes()
    for path in (tmp_path / "src").rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "swift-data", f"CheXpert/{path.relative_to(tmp_path / 'src').as_posix()}")
    assert "-" in client.head_object(Bucket="swift-data", Key="CheXpert/CheXpert-v1.0-small/big.bin")["ETag"]
    client.put_object(Bucket="swift-data", Key="CheXpert/CheXpert-v1.0-small/train/", Body=b"")  # a folder marker
    args = ("--source", "s3://swift-data/CheXpert", "--source-profile", "swift", "--source-endpoint", s3["endpoint"],
            "--dest", "s3://chexops-data/raw/swift")
    assert ingest_json(*args)["sent"] == len(files)
    assert ingest_json(*args)["sent"] == 0  # the multipart ETag against the plain one: compared by size
    cache = tmp_path / "cache"
    back = ("--source", "s3://swift-data/CheXpert", "--dest", str(cache))
    assert ingest_json(*back)["sent"] == len(files)
    assert {p.relative_to(cache).as_posix(): p.read_bytes() for p in cache.rglob("*") if p.is_file()} == files
    (cache / "CheXpert-v1.0-small/train.csv").write_bytes(b"edited")
    (cache / "CheXpert-v1.0-small/big.bin").unlink()
    again = ingest_json(*back)
    assert (again["sent"], again["changed"], again["missing"]) == (2, 1, 1)  # the multipart file's MD5 matched


def test_bad_input_is_one_line_and_exit_2(s3, tmp_path):
    for args, says in [
        (("--source", str(tmp_path / "nowhere"), "--dest", "s3://chexops-data/x"), "no such folder"),
        (("--source", str(tmp_path), "--dest", "s3://no-such-bucket/x"), "no-such-bucket"),
        (("--source", str(tmp_path), "--dest", "s3://chexops-data/x"), "no objects"),
        (("--source", "s3://chexops-data/x", "--source-profile", "nobody", "--dest", str(tmp_path)), "nobody"),
    ]:
        err = ingest_json(*args, code=2)["stderr"]
        assert says in err and len(err.strip().splitlines()) == 1, err
