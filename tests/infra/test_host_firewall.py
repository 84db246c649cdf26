"""The common role's host firewall on the real kernel, and its checks, run by Ansible here.

The nftables rules and the nftables unit's drop-in are rendered by Ansible from the role's own
templates and defaults (with the repository's group_vars, as in a real run). The rules are loaded
in a network namespace standing in for the GPU node, next to a DNAT rule written the way
kube-proxy writes a NodePort (nat prerouting, destination type local, priority dstnat), in front
of a "pod" namespace; two more namespaces are an operator on the internet and a private-network
node. Listeners stand in for sshd, WireGuard and the registry pod.

Root, `ip netns` and `nft` are needed for the namespace tests (skipped, saying which is missing,
elsewhere); `bash tests/infra/install-tools.sh` installs nftables and iproute2.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
TABLE = "chexops"

# The GPU node's view: operators' SSH network, the private network, the site link to node1.
SSH_CIDR = "198.51.100.0/24"
NODE_OUT, OPERATOR = "198.51.100.1", "198.51.100.5"  # the node's public side; an operator's laptop
NODE_WAN, PEER = "203.0.113.1", "203.0.113.20"  # the node's second public address; node1's floating IP
NODE_PRIV, PRIVATE_PEER = "192.168.50.11", "192.168.50.12"
NODE_POD, POD = "10.42.0.1", "10.42.0.9"
NODE_PORT, POD_PORT, WG_PORT = 30500, 5000, 51820
GPU_VARS = {
    "chexops_ssh_allowed_cidrs": [SSH_CIDR],
    "chexops_private_network_cidr": "192.168.50.0/24",
    "chexops_site_link": {
        "cidr": "10.99.0.0/24",
        "port": WG_PORT,
        "kvm_endpoint": PEER,
        "kvm_ip": "10.99.0.1",
        "gpu_endpoint": NODE_WAN,
        "gpu_ip": "10.99.0.2",
    },
    "chexops_link_ip": "10.99.0.2",
}
SERVER_VARS = {"chexops_ssh_allowed_cidrs": [SSH_CIDR], "chexops_ingress_allowed_cidrs": ["0.0.0.0/0"]}

RENDER_TASKS = [
    {"name": "Output directory", "ansible.builtin.file": {"path": "{{ out }}", "state": "directory", "mode": "0755"}},
    *(
        {
            "name": name,
            "ansible.builtin.template": {
                "src": f"{ANSIBLE}/roles/common/templates/{name}.j2",
                "dest": "{{ out }}/" + name,
            },
        }
        for name in ("nftables.conf", "nftables-unit.conf")
    ),
]


def _env(work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_CLIENT", "SSH_CONNECTION")}
    return {
        **env,
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        **extra,
    }


def _ansible_playbook(work: Path, inventory: dict, play: list, env: dict[str, str] | None = None):
    if not (BIN / "ansible-playbook").exists():
        pytest.skip(f"ansible-playbook is not in {BIN} (bash tests/infra/install-tools.sh installs it)")
    (work / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (work / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "hosts.yml", "play.yml"],
        cwd=work,
        env=env or _env(work),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict[str, str]]:
    """{host: {file: text}}: the gpu node, and node1 with k8s_api_allowed_cidrs unset, [] or set."""
    work = tmp_path_factory.mktemp("firewall-render")
    # A role whose defaults are the common role's (lowest precedence, so group_vars win as in a run).
    (work / "roles" / "render" / "defaults").mkdir(parents=True)
    shutil.copy(ANSIBLE / "roles" / "common" / "defaults" / "main.yml", work / "roles" / "render" / "defaults")
    (work / "roles" / "render" / "tasks").mkdir()
    (work / "roles" / "render" / "tasks" / "main.yml").write_text(yaml.safe_dump(RENDER_TASKS, sort_keys=False))
    shutil.copytree(ANSIBLE / "group_vars", work / "group_vars")
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    servers = {
        "api-unset": {**local, **SERVER_VARS},
        "api-closed": {**local, **SERVER_VARS, "chexops_k8s_api_allowed_cidrs": []},
        "api-set": {**local, **SERVER_VARS, "chexops_k8s_api_allowed_cidrs": ["192.0.2.0/24"]},
    }
    gpus = {
        "gpu1": {**local, **GPU_VARS},
        "gpu-opened": {**local, **GPU_VARS, "common_firewall_nodeport_cidrs": [f"{OPERATOR}/32"]},
    }
    inventory = {"all": {"hosts": gpus, "children": {"k3s_server": {"hosts": servers}}}}
    play = [{"hosts": "all", "gather_facts": False, "vars": {"out": f"{work}/out/{{{{ inventory_hostname }}}}"}}]
    play[0]["roles"] = ["render"]
    proc = _ansible_playbook(work, inventory, play, _env(work, ANSIBLE_ROLES_PATH=str(work / "roles")))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return {host.name: {f.name: f.read_text() for f in host.iterdir()} for host in (work / "out").iterdir()}


def test_k8s_api_sources_fall_back_to_ssh_networks_when_unset(rendered):
    def api_rule(host: str) -> list[str]:
        return [line.strip() for line in rendered[host]["nftables.conf"].splitlines() if "dport 6443" in line]

    assert f"tcp dport 6443 ip saddr {{ {SSH_CIDR} }} accept" in api_rule("api-unset")
    assert "tcp dport 6443 ip saddr { 192.0.2.0/24 } accept" in api_rule("api-set")
    assert not [rule for rule in api_rule("api-closed") if rule.endswith("accept")], api_rule("api-closed")
    assert "dport 6443" not in rendered["gpu1"]["nftables.conf"]


# --- the network namespaces ----------------------------------------------------------------------

LISTEN = r"""
import select, socket, sys
socks = []
for spec in sys.argv[1:]:
    proto, port = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    if proto == "tcp":
        s.listen(16)
    socks.append((proto, s))
print("ready", flush=True)
while True:
    ready = select.select([s for _, s in socks], [], [])[0]
    for proto, s in socks:
        if s not in ready:
            continue
        if proto == "tcp":
            conn, _ = s.accept()
            conn.sendall(b"hello")
            conn.close()
        else:
            _, peer = s.recvfrom(64)
            s.sendto(b"hello", peer)
"""

PROBE = r"""
import socket, sys
proto, source, host, port = sys.argv[1:]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(0.8)
s.bind((source, 0))
try:
    if proto == "tcp":
        s.connect((host, int(port)))
        reply = s.recv(64)
    else:
        s.sendto(b"ping", (host, int(port)))
        reply = s.recv(64)
except OSError:
    reply = b""
sys.exit(0 if reply == b"hello" else 1)
"""

# NodePort 30500 the way kube-proxy (iptables-nft) writes it: nat prerouting at dstnat, for
# destinations of type local, DNAT to the pod; traffic from outside the cluster is masqueraded.
KUBE_PROXY = f"""
table ip nat {{
    chain PREROUTING {{
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local tcp dport {NODE_PORT} dnat to {POD}:{POD_PORT}
    }}
    chain POSTROUTING {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr != 10.42.0.0/16 ip daddr {POD} tcp dport {POD_PORT} masquerade
    }}
}}
"""


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return f"needs root (network namespaces), and this test runs as uid {os.geteuid()}"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (bash tests/infra/install-tools.sh installs it)"
    probe = subprocess.run(["ip", "netns", "add", f"chx{os.getpid()}-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` fails here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"chx{os.getpid()}-probe"], check=False)
    return None


class Namespaces:
    """The node, the outside, a private node and a pod, each a network namespace."""

    def __init__(self) -> None:
        self.prefix = f"chx{os.getpid()}"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.links = 0

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def sh(self, name: str, *cmd: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns(name), *cmd], input=stdin, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0 or not check, f"{name}: {' '.join(cmd)}: {proc.stderr}"
        return proc

    def add(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", self.ns(name)], check=True)
        self.names.append(name)
        self.sh(name, "ip", "link", "set", "lo", "up")

    def link(self, a: str, a_if: str, a_addrs: list[str], b: str, b_if: str, b_addrs: list[str]) -> None:
        self.links += 1
        tmp = f"v{os.getpid()}x{self.links}"
        subprocess.run(["ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp + "p"], check=True)
        for ns, ifname, addrs, dev in ((a, a_if, a_addrs, tmp), (b, b_if, b_addrs, tmp + "p")):
            subprocess.run(["ip", "link", "set", dev, "netns", self.ns(ns)], check=True)
            self.sh(ns, "ip", "link", "set", dev, "name", ifname)
            for addr in addrs:
                self.sh(ns, "ip", "addr", "add", addr, "dev", ifname)
            self.sh(ns, "ip", "link", "set", ifname, "up")

    def listen(self, name: str, *specs: str) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(name), sys.executable, "-c", LISTEN, *specs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()

    def answers(self, name: str, proto: str, source: str, host: str, port: int) -> bool:
        return self.sh(name, sys.executable, "-c", PROBE, proto, source, host, str(port), check=False).returncode == 0

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for name in self.names:
            subprocess.run(["ip", "netns", "del", self.ns(name)], check=False)


@pytest.fixture(scope="module")
def namespaces():
    reason = _missing_requirement()
    if reason:
        pytest.skip(f"the firewall is not loaded in network namespaces: {reason}.")
    spaces = Namespaces()
    try:
        for name in ("node", "outside", "private", "pod"):
            spaces.add(name)
        spaces.link(
            "node", "eth0", [f"{NODE_OUT}/24", f"{NODE_WAN}/24"], "outside", "eth0", [f"{OPERATOR}/24", f"{PEER}/24"]
        )
        spaces.link("node", "eth1", [f"{NODE_PRIV}/24"], "private", "eth0", [f"{PRIVATE_PEER}/24"])
        spaces.link("node", "cni0", [f"{NODE_POD}/24"], "pod", "eth0", [f"{POD}/24"])
        spaces.sh("pod", "ip", "route", "add", "default", "via", NODE_POD)
        spaces.sh("node", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        spaces.sh("node", "nft", "-f", "-", stdin=KUBE_PROXY)
        spaces.listen("node", "tcp:22", f"udp:{WG_PORT}")
        spaces.listen("pod", f"tcp:{POD_PORT}")
        yield spaces
    finally:
        spaces.close()


def test_node_ports_answer_only_the_cluster_while_ssh_and_wireguard_still_do(namespaces, rendered, tmp_path):
    ns = namespaces
    # Without the role's rules the DNAT path works from anywhere (what the GPU node had).
    assert ns.answers("outside", "tcp", OPERATOR, NODE_OUT, NODE_PORT), "the NodePort stand-in does not work"

    rules = tmp_path / "nftables.conf"
    rules.write_text(rendered["gpu1"]["nftables.conf"])
    ns.sh("node", "nft", "-f", str(rules))
    try:
        # The internet: no NodePort on either public address, from either public source.
        for source, address in ((OPERATOR, NODE_OUT), (PEER, NODE_WAN), (PEER, NODE_OUT)):
            assert not ns.answers("outside", "tcp", source, address, NODE_PORT), f"NodePort open to {source}"
        # The cluster: the private network still reaches it.
        assert ns.answers("private", "tcp", PRIVATE_PEER, NODE_PRIV, NODE_PORT)
        # SSH from the operators' network only; WireGuard from node1's floating IP only.
        assert ns.answers("outside", "tcp", OPERATOR, NODE_OUT, 22)
        assert not ns.answers("outside", "tcp", PEER, NODE_WAN, 22)
        assert ns.answers("outside", "udp", PEER, NODE_WAN, WG_PORT)
        assert not ns.answers("outside", "udp", OPERATOR, NODE_OUT, WG_PORT)
        # kube-proxy's table is untouched by loading ours (again: the file is reloadable).
        ns.sh("node", "nft", "-f", str(rules))
        assert "dnat to" in ns.sh("node", "nft", "list", "table", "ip", "nat").stdout
        # common_firewall_nodeport_cidrs opens the NodePorts to those sources, and only to them.
        rules.write_text(rendered["gpu-opened"]["nftables.conf"])
        ns.sh("node", "nft", "-f", str(rules))
        assert ns.answers("outside", "tcp", OPERATOR, NODE_OUT, NODE_PORT)
        assert not ns.answers("outside", "tcp", PEER, NODE_WAN, NODE_PORT)
    finally:
        ns.sh("node", "nft", "delete", "table", "inet", TABLE, check=False)


def _unit_commands(dropin: str) -> dict[str, list[str]]:
    """ExecStart/ExecReload/ExecStop of the packaged nftables.service with the drop-in applied."""
    for base in (Path("/usr/lib/systemd/system/nftables.service"), Path("/lib/systemd/system/nftables.service")):
        if base.exists():
            break
    else:
        pytest.skip("the nftables package's unit file is not installed here")
    commands: dict[str, list[str]] = {}
    for text in (base.read_text(), dropin):
        section = ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and line.startswith("Exec") and "=" in line:
                key, value = line.split("=", 1)
                commands[key] = [*commands.get(key, []), value] if value else []
    return commands


def test_stopping_and_reloading_nftables_keep_the_clusters_tables(namespaces, rendered, tmp_path):
    """The unit's own commands, as installed (packaged unit + the role's drop-in), run in the node."""
    ns = namespaces
    rules = tmp_path / "nftables.conf"
    rules.write_text(rendered["gpu1"]["nftables.conf"])
    commands = _unit_commands(rendered["gpu1"]["nftables-unit.conf"])

    def run(key: str) -> None:
        for command in commands[key]:
            argv = shlex.split(command.lstrip("-").replace("/etc/nftables.conf", str(rules)))
            ns.sh("node", *argv, check=not command.startswith("-"))

    def tables() -> set[str]:
        return {" ".join(line.split()[1:]) for line in ns.sh("node", "nft", "list", "tables").stdout.splitlines()}

    # k3s's own tables: kube-proxy's nat (the fixture's) and a filter table as iptables-nft writes it.
    ns.sh(
        "node",
        "nft",
        "-f",
        "-",
        stdin="table ip filter {\n chain FORWARD { type filter hook forward priority 0; }\n}\n",
    )
    try:
        run("ExecStart")
        assert {f"inet {TABLE}", "ip nat", "ip filter"} <= tables()
        run("ExecReload")
        assert {f"inet {TABLE}", "ip nat", "ip filter"} <= tables()
        run("ExecStop")
        assert f"inet {TABLE}" not in tables() and {"ip nat", "ip filter"} <= tables(), tables()
        run("ExecStop")  # stopping twice (nothing left of ours) is not an error
        assert ns.answers("outside", "tcp", OPERATOR, NODE_OUT, NODE_PORT), "kube-proxy's DNAT did not survive"
    finally:
        ns.sh("node", "nft", "delete", "table", "inet", TABLE, check=False)
        ns.sh("node", "nft", "delete", "table", "ip", "filter", check=False)


# --- the controller's own SSH address -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ssh_client", "ok"),
    [("203.0.113.77 50022 22", False), ("198.51.100.9 50022 22", True), ("192.168.50.11 50022 22", True), ("", True)],
    ids=["outside", "operator", "bastion", "no-ssh"],
)
def test_the_play_stops_before_the_firewall_cuts_its_own_ssh(tmp_path, ssh_client, ok):
    inventory = {
        "all": {"hosts": {"node": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    }
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "vars": {"chexops_ssh_allowed_cidrs": [SSH_CIDR]},
            "tasks": [{"ansible.builtin.include_role": {"name": "common", "tasks_from": "firewall_checks"}}],
        }
    ]
    env = _env(tmp_path, **({"SSH_CLIENT": ssh_client} if ssh_client else {}))
    proc = _ansible_playbook(tmp_path, inventory, play, env)
    text = " ".join(proc.stdout.split())
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:]
    else:
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert f"from 203.0.113.77, which is in neither ssh_allowed_cidrs ({SSH_CIDR})" in text, proc.stdout[-3000:]
