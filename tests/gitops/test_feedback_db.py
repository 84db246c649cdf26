"""The clinic endpoint's feedback database as the cluster makes it, on a real PostgreSQL: the init
script of k8s/platform/postgresql (role `feedback`, one database per environment), then the URL the
Ansible `secrets` role writes into each environment's Secret `chexops-feedback-db` (a password with
URL-special characters, password authentication on), used by the service's own feedback store."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jinja2
import psycopg2
import pytest
import yaml

from chexops.feedback.store import FeedbackStore
from mlflow_fixtures import postgres_cluster

from .render import REPO

pytestmark = pytest.mark.slow

URL_HOSTILE = "p@ss/w:rd%?#1"  # every character a connection URL must escape


def _secret_urls(host: str) -> dict[str, str]:
    """namespace -> the `url` of Secret chexops-feedback-db, rendered as Ansible renders it (staging and
    production for the service, argo for the scheduled retraining's feedback export)."""
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    variables = {"vault_feedback_db_password": URL_HOSTILE}
    variables["secrets_feedback_password"] = env.from_string(defaults["secrets_feedback_password"]).render(**variables)
    variables["secrets_feedback_host"] = host  # the cluster's is postgresql.platform.svc.cluster.local:5432
    return {
        s["namespace"]: env.from_string(s["data"]["url"]).render(**variables)
        for s in defaults["secrets_kubernetes"]
        if s["name"] == "chexops-feedback-db"
    }


def test_feedback_databases_and_the_secrets_urls(tmp_path):
    if shutil.which("psql") is None:
        pytest.skip("psql (PostgreSQL client) is not installed")
    with postgres_cluster() as admin_url:
        admin = urlsplit(admin_url)
        env = {
            **os.environ,
            "PGHOST": admin.hostname,
            "PGPORT": str(admin.port),
            "POSTGRES_USER": admin.username,
            "POSTGRES_DB": admin.path.lstrip("/"),
            "FEEDBACK_PASSWORD": URL_HOSTILE,
        }
        script = REPO / "k8s" / "platform" / "postgresql" / "10-feedback.sh"
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr

        # Password authentication for everyone but the admin, as in the cluster.
        dsn = admin_url.replace("postgresql+psycopg2://", "postgresql://", 1)
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SHOW hba_file")
            hba = Path(cur.fetchone()[0])
            hba.write_text(
                "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            )
            cur.execute("SELECT pg_reload_conf()")
        conn.close()

        urls = _secret_urls(f"{admin.hostname}:{admin.port}")
        assert set(urls) == {"staging", "production", "argo"}, (
            "a feedback database URL per environment, and the retraining's"
        )
        assert urls["argo"] == urls["production"], (
            "the scheduled retraining exports the clinics' (production's) feedback"
        )
        for namespace in ("staging", "production"):
            url = urls[namespace]
            parts = urlsplit(url)
            assert (parts.username, unquote(parts.password), parts.path) == (
                "feedback",
                URL_HOSTILE,
                f"/feedback_{namespace}",
            )
            store = FeedbackStore(url)  # creates its tables as `feedback`, the database's owner
            findings = [{"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True}]
            store.add_prediction("req-1", "clinic-a", "chexops-cxr", "1", findings, "urgent", {"format": "png"})
            _, created = store.add_feedback("req-1", True, None, None)
            store.close()
            assert created and FeedbackStore(url).prediction("req-1")["request_id"] == "req-1"
        production = urlsplit(urls["production"])
        wrong = production._replace(netloc=f"feedback:wrong-password@{production.hostname}:{production.port}").geturl()
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(wrong)
