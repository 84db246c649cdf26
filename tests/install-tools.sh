#!/usr/bin/env bash
# What the test suite needs beyond the virtual environment, installed when missing (idempotent):
# Debian's chromium for the browser test (Playwright drives it; browsers are never downloaded),
# Debian's postgresql for the feedback-store and MLflow tests (initdb/pg_ctl under
# /usr/lib/postgresql/N/bin; the tests start their own throw-away clusters), then the infrastructure tools (tests/infra/install-tools.sh). Without root, missing Debian
# packages are reported and the tests that need them skip, saying why.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-tools: apt-get install chromium" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
    else
        echo "install-tools: chromium is missing and this is not root: the browser test will skip" >&2
    fi
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-tools: apt-get install postgresql (binaries only: no default cluster is created or started)" >&2
        export DEBIAN_FRONTEND=noninteractive
        mkdir -p /etc/postgresql-common
        grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf ||
            echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold postgresql >/dev/null
    else
        echo "install-tools: PostgreSQL (initdb) is missing and this is not root: the PostgreSQL tests will skip" >&2
    fi
fi

# Debian's Prometheus (prometheus + promtool) for the canary-analysis, rules and dashboard tests.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-tools: apt-get install prometheus" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "install-tools: prometheus is missing and this is not root: the canary-analysis tests will skip" >&2
    fi
fi

# The training image build's registry check (tests/test_freight.py): the Distribution registry with
# htpasswd (bcrypt) credentials, and busybox, whose sh and wget are what the BuildKit image runs it with.
if ! command -v docker-registry >/dev/null 2>&1 || ! command -v busybox >/dev/null 2>&1 ||
    ! command -v htpasswd >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-tools: apt-get install docker-registry busybox apache2-utils" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends docker-registry busybox apache2-utils >/dev/null
    else
        echo "install-tools: docker-registry, busybox or htpasswd is missing and this is not root: the build-script test will skip" >&2
    fi
fi

# The DICOM gateway's tests: Orthanc (the real PACS, with its DICOMweb plugin) and dicom3tools (dciodvfy).
if ! command -v Orthanc >/dev/null 2>&1 || ! command -v dciodvfy >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-tools: apt-get install orthanc orthanc-dicomweb dicom3tools" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb dicom3tools >/dev/null
    else
        echo "install-tools: Orthanc or dciodvfy is missing and this is not root: the PACS tests will skip" >&2
    fi
fi

bash "$here/infra/install-tools.sh"
