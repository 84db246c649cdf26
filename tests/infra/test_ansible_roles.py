"""The common and volumes roles, run for real against a throwaway Debian root (debootstrap)
through Ansible's chroot connection, with a loop device standing in for a Cinder volume.

Order: --check on the fresh root (must not fail), a real run, a second real run that must change
nothing, and --check again (nothing to change). Then the results are inspected on disk, and a
device holding another filesystem must be refused, never reformatted. The root starts as a CHI
bare-metal image does: firewalld enabled, a chrony.conf of its own without a sourcedir line.

The Debian root is cached as a tarball under $CHEXOPS_HOME/cache/infra/ (default ./.chexops),
so only the first run downloads it (about 40 s). Root, losetup/mount and debootstrap are needed:
the module is skipped, saying which is missing, elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chexops.core.paths import HOME_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
SUITE = "bookworm"
MIRROR = os.environ.get("CHEXOPS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a Chameleon cloud image already has; the roles install the rest over the network.
INCLUDE = "python3,python3-apt,openssh-server,sudo,ca-certificates,e2fsprogs,systemd,systemd-sysv,dbus,iproute2"
CACHE = Path(os.environ.get("CHEXOPS_HOME", REPO / HOME_DIR)).resolve() / "cache" / "infra"
TARBALL = CACHE / f"debian-{SUITE}-minbase-{hashlib.sha256(INCLUDE.encode()).hexdigest()[:8]}.tar"
RECAP = re.compile(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcSb2p0Q0hleE9wcy10ZXN0LWtleS1ub3QtcmVhbA alice@chexops-test"


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, mount and losetup), and this test runs as uid %d" % os.geteuid()
    for tool in ("debootstrap", "losetup", "mount", "umount", "chroot", "mkfs.ext2", "tar"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (bash tests/infra/install-tools.sh installs it)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices on this machine (/dev/loop-control is absent): the volume cannot be simulated"
    if not (BIN / "ansible-playbook").exists():
        return f"ansible-playbook is not in {BIN} (bash tests/infra/install-tools.sh installs it)"
    return None


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def _build_tarball() -> Path:
    """Debootstrap a minimal Debian once; later runs reuse the tarball."""
    if TARBALL.exists():
        return TARBALL
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "debootstrap.tmp"
    shutil.rmtree(work, ignore_errors=True)
    proc = _run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(work), MIRROR], timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(
            f"debootstrap of Debian {SUITE} from {MIRROR} failed (exit {proc.returncode}), so the roles cannot "
            f"run for real here: {(proc.stderr or proc.stdout).strip()[-400:]}"
        )
    partial = TARBALL.with_suffix(".partial")
    proc = _run(["tar", "--numeric-owner", "-C", str(work), "-cf", str(partial), "."], timeout=600)
    shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    partial.replace(TARBALL)
    for stale in CACHE.glob(f"debian-{SUITE}-minbase-*.tar"):
        if stale != TARBALL:
            stale.unlink()
    return TARBALL


def _mounts_under(root: Path) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(str(root) + "/"):
            mounts.append(point)
    return sorted(mounts, key=len, reverse=True)


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory):
    """(root, loop device, spare loop device with an ext2 filesystem, work dir)."""
    reason = _missing_requirement()
    if reason:
        pytest.skip(f"Ansible roles not run against a chroot: {reason}.")
    tarball = _build_tarball()
    work = tmp_path_factory.mktemp("ansible-chroot")
    root = work / "root"
    root.mkdir()
    loops: list[str] = []
    try:
        proc = _run(["tar", "--numeric-owner", "-C", str(root), "-xf", str(tarball)], timeout=600)
        assert proc.returncode == 0, proc.stderr
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        # No service may start inside the chroot (it would run on this machine).
        policy = root / "usr" / "sbin" / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        for cmd in (
            ["mount", "-t", "proc", "proc", str(root / "proc")],
            ["mount", "--bind", "/dev", str(root / "dev")],
        ):
            proc = _run(cmd)
            assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
        for name, size in (("volume.img", "256M"), ("foreign.img", "32M")):
            image = work / name
            _run(["truncate", "-s", size, str(image)])
            proc = _run(["losetup", "-f", "--show", str(image)])
            if proc.returncode != 0:
                pytest.skip(f"losetup could not attach a loop device ({proc.stderr.strip()}): no volume to test with.")
            loops.append(proc.stdout.strip())
        proc = _run(["mkfs.ext2", "-q", loops[1]])
        assert proc.returncode == 0, proc.stderr
        yield root, loops[0], loops[1], work
    finally:
        for point in _mounts_under(root):
            if _run(["umount", point]).returncode != 0:
                _run(["umount", "-l", point])
        for loop in loops:
            _run(["losetup", "-d", loop])
        if not _mounts_under(root):
            shutil.rmtree(root, ignore_errors=True)


def _inventory(work: Path, root: Path, volumes: list[dict]) -> Path:
    host = {
        "ansible_connection": "community.general.chroot",
        "ansible_host": str(root),
        "ansible_python_interpreter": "/usr/bin/python3",
        "chexops_volumes": volumes,
        "chexops_ssh_allowed_cidrs": ["203.0.113.0/24"],
        "chexops_private_network_cidr": "192.168.50.0/24",
        "chexops_public_ip": None,
        "common_admin_users": [{"name": "alice", "ssh_keys": [ADMIN_KEY]}],
    }
    inventory = {
        "all": {
            "hosts": {"debian-root": host},
            "children": {"kvm": {"hosts": {"debian-root": None}}, "storage": {"hosts": {"debian-root": None}}},
        }
    }
    path = work / f"inventory-{len(volumes)}-{volumes[0]['device'].rsplit('/', 1)[-1] if volumes else 'none'}.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def _playbook(
    work: Path, inventory: Path, *extra: str, tags: str = "common,volumes"
) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    # The controller's SSH source check reads SSH_CLIENT on the node: not this machine's own session.
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("SSH_CLIENT", "SSH_CONNECTION")},
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml", "--tags", tags, *extra]
    proc = _run(cmd, cwd=ANSIBLE_DIR, env=env, timeout=900)
    match = RECAP.findall(proc.stdout)
    stats = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match[-1]))) if match else {}
    return proc, stats


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout[-4000:] + "\n" + proc.stderr[-2000:]).strip()


# What a CHI bare-metal image brings: firewalld enabled (a wants link and its D-Bus alias), and a
# chrony.conf of its own without a sourcedir line.
FIREWALLD_UNIT = """[Unit]
Description=firewalld - dynamic firewall daemon
Conflicts=iptables.service ip6tables.service ebtables.service ipset.service nftables.service

[Service]
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
Alias=dbus-org.fedoraproject.FirewallD1.service
"""
IMAGE_CHRONY_CONF = """# chrony.conf of the image
pool ntp.example.org iburst
driftfile /var/lib/chrony/chrony.drift
makestep 1 3
rtcsync
"""
FIREWALLD_LINKS = ("multi-user.target.wants/firewalld.service", "dbus-org.fedoraproject.FirewallD1.service")


def _image_like(root: Path) -> None:
    units = root / "usr" / "lib" / "systemd" / "system"
    (units / "firewalld.service").write_text(FIREWALLD_UNIT)
    for link in FIREWALLD_LINKS:
        path = root / "etc" / "systemd" / "system" / link
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to("/usr/lib/systemd/system/firewalld.service")
    (root / "etc" / "chrony").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "chrony" / "chrony.conf").write_text(IMAGE_CHRONY_CONF)


def test_common_and_volumes_converge_idempotently(debian_root):
    root, loop, _spare, work = debian_root
    _image_like(root)
    volumes = [
        {
            "name": "platform",
            "device": "/dev/disk/by-id/virtio-absent",
            "fallback_device": loop,
            "mount_point": "/mnt/platform",
            "fstype": "ext4",
        }
    ]
    inventory = _inventory(work, root, volumes)

    check, stats = _playbook(work, inventory, "--check", "--diff")
    assert check.returncode == 0 and stats.get("failed") == 0, "--check on a fresh node failed:\n" + _tail(check)

    first, stats = _playbook(work, inventory)
    assert first.returncode == 0 and stats.get("failed") == 0, _tail(first)
    assert stats["changed"] > 0

    # Data written on the volume must survive every later run (format only if blank).
    marker = root / "mnt" / "platform" / "keep.txt"
    marker.write_text("precious")

    second, stats = _playbook(work, inventory)
    assert second.returncode == 0, _tail(second)
    assert stats["changed"] == 0, "second run changed something (not idempotent):\n" + _tail(second)

    recheck, stats = _playbook(work, inventory, "--check")
    assert recheck.returncode == 0 and stats["changed"] == 0, _tail(recheck)
    assert marker.read_text() == "precious"

    # --- what the roles left on disk --------------------------------------------------------
    fstab = (root / "etc" / "fstab").read_text()
    uuid = _run(["blkid", "-o", "value", "-s", "UUID", loop]).stdout.strip()
    assert uuid and re.search(rf"^UUID={uuid}\s+/mnt/platform\s+ext4\s+defaults,nofail,noatime\s", fstab, re.M), fstab
    assert str(root / "mnt" / "platform") in _mounts_under(root)
    assert _run(["blkid", "-o", "value", "-s", "TYPE", loop]).stdout.strip() == "ext4"

    sshd = (root / "etc" / "ssh" / "sshd_config.d" / "00-chexops-hardening.conf").read_text()
    assert "PasswordAuthentication no" in sshd and "PermitRootLogin no" in sshd
    proc = _run(["chroot", str(root), "/usr/sbin/sshd", "-t"])
    assert proc.returncode == 0, proc.stderr

    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^alice:", passwd, re.M)
    assert (root / "home" / "alice" / ".ssh" / "authorized_keys").read_text().strip() == ADMIN_KEY
    sudoers = root / "etc" / "sudoers.d" / "90-chexops-admins"
    assert sudoers.stat().st_mode & 0o777 == 0o440

    rules = (root / "etc" / "nftables.conf").read_text()
    assert "policy drop" in rules and "203.0.113.0/24" in rules and "flush ruleset" not in rules
    proc = _run(["chroot", str(root), "/usr/sbin/nft", "-c", "-f", "/etc/nftables.conf"])
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(root / "etc" / "localtime") == "/usr/share/zoneinfo/Etc/UTC"
    assert (root / "etc" / "chrony" / "sources.d" / "chexops.sources").read_text().count("pool ") == 1
    # Enabled for the next boot, although nothing was started in the chroot.
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    assert (wants / "chrony.service").is_symlink() and (wants / "ssh.service").is_symlink()
    assert (root / "etc" / "systemd" / "system" / "sysinit.target.wants" / "nftables.service").is_symlink()

    # firewalld: disabled (no link left) and masked, so nftables wins every boot.
    system = root / "etc" / "systemd" / "system"
    assert not [link for link in FIREWALLD_LINKS if (system / link).is_symlink()], FIREWALLD_LINKS
    assert os.readlink(system / "firewalld.service") == "/dev/null"
    proc = _run(["chroot", str(root), "systemctl", "is-enabled", "firewalld.service"])
    assert proc.stdout.strip() == "masked", proc.stdout + proc.stderr
    # nftables' stop deletes only the role's table (the packaged unit would flush k3s's too).
    dropin = (system / "nftables.service.d" / "chexops.conf").read_text()
    assert "ExecStop=\nExecStop=-/usr/sbin/nft delete table inet chexops\n" in dropin
    # chrony: the image's own configuration kept, and made to read the role's sources.
    chrony = (root / "etc" / "chrony" / "chrony.conf").read_text()
    assert "makestep 1 3" in chrony and re.findall(r"^sourcedir .*$", chrony, re.M) == [
        "sourcedir /etc/chrony/sources.d"
    ]
    proc = _run(["chroot", str(root), "chronyd", "-p", "-f", "/etc/chrony/chrony.conf"])  # chrony's own parser
    assert proc.returncode == 0 and "sourcedir /etc/chrony/sources.d" in proc.stdout, proc.stdout + proc.stderr


def test_volume_with_another_filesystem_is_refused(debian_root):
    root, _loop, spare, work = debian_root
    volumes = [{"name": "datasets", "device": spare, "mount_point": "/mnt/datasets", "fstype": "ext4"}]
    inventory = _inventory(work, root, volumes)
    proc, stats = _playbook(work, inventory, tags="volumes")
    assert proc.returncode != 0 and stats.get("failed") == 1, _tail(proc)
    assert "already holds a ext2 filesystem" in proc.stdout and "never reformatted" in proc.stdout
    assert _run(["blkid", "-o", "value", "-s", "TYPE", spare]).stdout.strip() == "ext2"
    assert "/mnt/datasets" not in (root / "etc" / "fstab").read_text()
