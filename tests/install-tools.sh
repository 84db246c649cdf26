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

# AppArmor 4's parser for the BuildKit profile's test (tests/infra/test_buildkit_apparmor.py): the
# nodes run Ubuntu 24.04's AppArmor 4, whose `userns` rule bookworm's parser (3.0) does not know.
# Trixie's apparmor and the libc6 it needs (>= 2.38) are unpacked, not installed, under
# /opt/chexops/apparmor through a private apt sources list (the system's apt state is untouched);
# bin/apparmor_parser runs that parser with that libc's loader.
AA_ROOT=/opt/chexops/apparmor
AA_SUITE=trixie
AA_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
aa_unpack() {  # each step checked: a failure here must not stop the other tools' installation
    local aa_apt deb
    aa_apt="$(mktemp -d)" || return 1
    mkdir -p "$aa_apt/lists/partial" "$aa_apt/cache/archives/partial" "$aa_apt/debs" || return 1
    echo "deb [signed-by=$AA_KEYRING] http://deb.debian.org/debian $AA_SUITE main" >"$aa_apt/sources.list" || return 1
    local opts=(-o "Dir::Etc::SourceList=$aa_apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$aa_apt/lists" -o "Dir::Cache=$aa_apt/cache" -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq || return 1
    (cd "$aa_apt/debs" && apt-get "${opts[@]}" download -qq apparmor libc6) || return 1
    rm -rf "$AA_ROOT" && mkdir -p "$AA_ROOT/bin" || return 1
    for deb in "$aa_apt"/debs/*.deb; do dpkg-deb -x "$deb" "$AA_ROOT" || return 1; done
    rm -rf "$aa_apt"
    cat >"$AA_ROOT/bin/apparmor_parser" <<'WRAP' || return 1
#!/bin/sh
# Trixie's apparmor_parser with trixie's libc (tests/install-tools.sh); its profiles are under ../etc/apparmor.d.
root="$(cd "$(dirname "$0")/.." && pwd)"
loader="$(ls "$root"/usr/lib/*/ld-linux*.so.* | head -n 1)"
exec "$loader" --library-path "$(dirname "$loader")" "$root/usr/sbin/apparmor_parser" "$@"
WRAP
    chmod 0755 "$AA_ROOT/bin/apparmor_parser" && "$AA_ROOT/bin/apparmor_parser" --config-file=/dev/null --version >/dev/null &&
        echo "$AA_SUITE" >"$AA_ROOT/.suite"
}
if [ ! -x "$AA_ROOT/bin/apparmor_parser" ] || [ "$(cat "$AA_ROOT/.suite" 2>/dev/null)" != "$AA_SUITE" ]; then
    if [ "$(id -u)" -eq 0 ] && [ -r "$AA_KEYRING" ]; then
        echo "install-tools: $AA_SUITE's apparmor parser under $AA_ROOT" >&2
        aa_unpack || { echo "install-tools: unpacking $AA_SUITE's apparmor failed: the AppArmor profile test will skip" >&2; rm -rf "$AA_ROOT"; }
    else
        echo "install-tools: $AA_ROOT/bin/apparmor_parser is missing and this is not root on Debian: the AppArmor profile test will skip" >&2
    fi
fi

bash "$here/infra/install-tools.sh"
