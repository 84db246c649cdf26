#!/usr/bin/env bash
# Installs what tests/infra needs on a fresh Debian machine (run as root; reaches only PyPI and
# Debian's mirrors). Idempotent and quick when everything is there (stamp files).
#   VENV=.venv bash tests/infra/install-tools.sh
# - Debian packages: debootstrap (throwaway Debian root for the Ansible role runs), e2fsprogs,
#   util-linux (losetup), nftables (rule validation, and the firewall loaded in network namespaces),
#   iproute2 (`ip netns`), openssh-client (ssh -G, ssh-keygen), and kubectl (Debian's kubernetes-client) when none
#   is installed.
# - Into $VENV (pinned): ansible, ansible-lint, python-hcl2 (keystoneauth1 comes with the project's
#   `infra` extra).
# - checkov into its own venv (.venv-checkov): its pins conflict with the project's.
# Terraform itself is not installed here (it is a prebuilt binary from outside these registries):
# the tests that need it skip with a reason when `terraform` is absent.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
CHECKOV_VENV="${CHECKOV_VENV:-$REPO/.venv-checkov}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# Bump a list to reinstall it.
APT_PACKAGES=(debootstrap e2fsprogs util-linux nftables iproute2 openssh-client)
PY_PACKAGES=(ansible==12.3.0 ansible-lint==26.10.1 python-hcl2==8.1.4)
CHECKOV_PACKAGES=(checkov==3.3.30)

stamp_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

log() { printf 'install-tools: %s\n' "$*" >&2; }

# --- Debian packages ----------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# kubectl for the node re-join test (tests/infra/test_node_rejoin.py) when none is there: Debian's
# kubernetes-client (its kubectl talks to the test's small API server like a current one).
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages (${missing[*]}) and not root: install them with apt-get"
    else
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi


# --- Python packages into the project venv ------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "no virtual environment at $VENV (create it first: make venv)"
    exit 1
fi
py_stamp="$VENV/.chexops-infra-$(stamp_of "${PY_PACKAGES[@]}")"
if [ ! -e "$py_stamp" ]; then
    log "pip install ${PY_PACKAGES[*]} into $VENV"
    "$VENV/bin/pip" install --quiet "${PY_PACKAGES[@]}"
    # nvidia-pytriton is installed --no-deps on purpose (Makefile: only its tritonserver binary is used, and its
    # metadata asks numpy < 2), so pip check's lines about it are expected; any other broken requirement fails.
    broken=$("$VENV/bin/pip" check 2>&1 | grep -v -e '^nvidia-pytriton 0\.7\.0 ' -e '^No broken requirements' || true)
    if [ -n "$broken" ]; then echo "$broken" >&2; exit 1; fi
    rm -f "$VENV"/.chexops-infra-*
    touch "$py_stamp"
fi

# --- checkov in its own venv --------------------------------------------------------------------
ck_stamp="$CHECKOV_VENV/.chexops-$(stamp_of "${CHECKOV_PACKAGES[@]}")"
if [ ! -e "$ck_stamp" ]; then
    log "checkov into $CHECKOV_VENV"
    [ -x "$CHECKOV_VENV/bin/python" ] || "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/pip" install --quiet --upgrade pip
    "$CHECKOV_VENV/bin/pip" install --quiet "${CHECKOV_PACKAGES[@]}"
    rm -f "$CHECKOV_VENV"/.chexops-*
    touch "$ck_stamp"
fi
log "ready"
