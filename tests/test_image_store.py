"""The kept images in object storage, not in the database (`chexops.feedback.images`): a folder (the default)
that writes each image whole or not at all, and S3 on a real S3 server (moto's server mode, as MinIO in the
cluster) behind a real `bentoml serve`: the image is an object under the environment's prefix before its feedback
is acknowledged, the export reads it back, the retention policy deletes the object and keeps the record, and an
unreachable S3 is `Unavailable` (a 503 for what needs it), never an image silently written nowhere."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from chexops.core.processes import free_port
from chexops.feedback.errors import Unavailable
from chexops.feedback.images import FolderImages, S3Images, image_key, open_image_store
from chexops.feedback.store import FeedbackStore
from service_fixtures import API_KEY, start_service
from support import moto_s3, run_cli


def test_a_folder_store_writes_whole_images_under_random_keys(tmp_path):
    store = FolderImages(tmp_path / "images")
    key = image_key("ab12cd", b"\xff\xd8\xff\xe0 jpeg")
    assert key == "ab/ab12cd.jpg" and image_key("ab12cd", b"\x89PNG") == "ab/ab12cd.png"
    store.put(key, b"\xff\xd8\xff\xe0 jpeg")
    assert store.get(key) == b"\xff\xd8\xff\xe0 jpeg" and store.get("ab/other.png") is None
    assert [p.name for p in (tmp_path / "images").rglob("*")] == ["ab", "ab12cd.jpg"]  # no temporary file left
    with pytest.raises(ValueError, match="leaves the image folder"):
        store.put("../../escape.png", b"x")
    store.delete(key)
    store.delete(key)  # already gone: nothing to do
    assert store.get(key) is None


def test_the_setting_names_a_folder_or_a_bucket(tmp_path):
    assert isinstance(open_image_store("", tmp_path), FolderImages) and open_image_store("", tmp_path).root == tmp_path
    assert open_image_store(str(tmp_path / "x"), tmp_path).root == tmp_path / "x"
    s3 = open_image_store("s3://chexops-images/staging/", tmp_path)
    assert isinstance(s3, S3Images) and (s3.bucket, s3.prefix, s3.location) == (
        "chexops-images", "staging", "s3://chexops-images/staging",
    )  # fmt: skip
    for bad, why in (("s3:///x", "names no bucket"), ("gs://b/p", "a folder or s3://")):
        with pytest.raises(Exception, match=why):
            open_image_store(bad, tmp_path)


def test_an_unreachable_s3_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}", images=S3Images("chexops-images", "staging"))
    try:
        store.add_prediction("r1", "north", "m", "1", [], "routine", {})
        with pytest.raises(Unavailable, match="cannot be reached"):
            store.set_image("r1", b"\x89PNG")
        assert store.prediction("r1")["has_image"] is False  # no key recorded for an image kept nowhere
    finally:
        store.close()


def _png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_the_service_keeps_images_in_s3(served_model, tmp_path):
    with moto_s3(tmp_path, ["chexops-images"]) as s3:
        client = s3["client"]
        db = tmp_path / "feedback.db"
        env = {
            "CHEXOPS_FEEDBACK_URL": f"sqlite:///{db}",
            "CHEXOPS_IMAGE_STORE": "s3://chexops-images/staging",
            # as the cluster gives them (Secret chexops-images-s3, by secretKeyRef)
            "AWS_ACCESS_KEY_ID": "moto-key-id",
            "AWS_SECRET_ACCESS_KEY": "moto-any-value",  # pragma: allowlist secret
            **{k: v for k, v in s3["env"].items() if k != "AWS_CONFIG_FILE"},
        }
        service = start_service(served_model, log_name="s3-images.log", **env)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        try:
            ids = []
            for _ in range(2):
                answer = httpx.post(
                    f"{service.url}/predict", files={"image": ("x.png", _png())}, headers=headers, timeout=60
                )
                assert answer.status_code == 200, answer.text
                ids.append(answer.json()["request_id"])
            body = {"request_id": ids[0], "correct": True}
            ack = httpx.post(f"{service.url}/feedback", json=body, headers=headers, timeout=30)
            assert ack.status_code == 200, ack.text
            deadline = time.monotonic() + 20
            listed: list[str] = []
            while time.monotonic() < deadline and len(listed) < 2:
                found = client.list_objects_v2(Bucket="chexops-images", Prefix="staging/")  # moto: per process
                listed = [o["Key"] for o in found.get("Contents", [])]
                time.sleep(0.1)
            assert sorted(listed) == sorted(f"staging/{r[:2]}/{r}.png" for r in ids)
        finally:
            service.stop()
        assert not list(tmp_path.rglob("images"))  # nothing fell back to a local folder
        cli_env = {**env, "CHEXOPS_HOME": str(service.home)}
        export = run_cli("feedback", "export", "--out", str(tmp_path / "out"), "--json", env=cli_env)
        assert export.returncode == 0, export.stderr[-2000:]
        assert json.loads(export.stdout)["rows"] == 1
        (written,) = (tmp_path / "out").rglob("*.png")
        kept = client.get_object(Bucket="chexops-images", Key=f"staging/{ids[0][:2]}/{ids[0]}.png")["Body"].read()
        assert written.read_bytes() == kept
        pruned = run_cli("feedback", "prune", "--unlabelled-days", "0", "--json", env=cli_env)
        assert pruned.returncode == 0, pruned.stderr[-2000:]
        result = json.loads(pruned.stdout)
        assert (result["images"], result["image_store"]) == (1, "s3://chexops-images/staging")
        found = client.list_objects_v2(Bucket="chexops-images", Prefix="staging/")
        listed = [o["Key"] for o in found.get("Contents", [])]
        assert listed == [f"staging/{ids[0][:2]}/{ids[0]}.png"]  # the one with feedback stays (not yet 30 days)
