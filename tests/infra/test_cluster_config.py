"""The cross-site topology, checked end to end without a cloud: the inventory generated from a
recorded `terraform output -json`, then the kubernetes and common roles' own templates rendered by
Ansible for every host of it (k3s configurations, the WireGuard site link, the nftables rules,
the RuntimeClass and StorageClass), and the results held against Terraform's security groups.

Also: the argo role's validation of `chexops_repo_url` (required, and equal to what
argocd/source/gitops-source.yaml names), run by Ansible on localhost.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
FIXTURE = Path(__file__).parent / "fixtures" / "terraform_output.json"
BIN = Path(sys.executable).parent

# A role whose defaults are the kubernetes and common roles' own (lowest precedence, as in a real
# run, so group_vars still override them) and whose tasks render those roles' templates.
RENDER_TASKS = """
- name: Output directory
  ansible.builtin.file:
    path: "{{ render_out }}"
    state: directory
    mode: "0755"
- name: k3s configuration
  ansible.builtin.template:
    src: "ANSIBLE/roles/kubernetes/templates/{{ 'server' if kubernetes_is_server | bool else 'agent' }}-config.yaml.j2"
    dest: "{{ render_out }}/k3s-config.yaml"
    mode: "0600"
- name: Site link, by the role's own tasks (each end's /etc/wireguard is its directory of OUT)
  ansible.builtin.include_tasks: "ANSIBLE/roles/kubernetes/tasks/site_link_config.yml"
  when: kubernetes_on_link | bool
- name: Cluster classes
  ansible.builtin.template:
    src: "ANSIBLE/roles/kubernetes/templates/cluster-classes.yaml.j2"
    dest: "{{ render_out }}/cluster-classes.yaml"
    mode: "0600"
  when: kubernetes_is_server | bool
- name: k3s registry mirrors
  ansible.builtin.template:
    src: "ANSIBLE/roles/kubernetes/templates/registries.yaml.j2"
    dest: "{{ render_out }}/registries.yaml"
    mode: "0600"
- name: Host firewall
  ansible.builtin.template:
    src: "ANSIBLE/roles/common/templates/nftables.conf.j2"
    dest: "{{ render_out }}/nftables.conf"
    mode: "0600"
"""

RENDER_PLAY = """
- name: Render the roles' templates for every host, locally
  hosts: all
  gather_facts: false
  connection: local
  vars:
    vault_k3s_token: "0123456789abcdef0123456789abcdef"
    render_out: "OUT/{{ inventory_hostname }}"
    kubernetes_link_dir: "OUT/{{ kubernetes_link_host }}"
  roles:
    - role: render
"""

RENDER_HANDLERS = """
- name: Restart the site link
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }}: the site link would restart"
"""
#: The link's two ends (the fixture's hosts with a link address).
LINK_ENDS = ("node1", "gpu1")


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


def _link_key() -> str:
    """A public key as `wg pubkey` prints it (base64 of 32 bytes)."""
    return base64.b64encode(os.urandom(32)).decode()


def _render(work: Path, link_keys: dict[str, str], *extra: str) -> dict[str, dict[str, str]]:
    """{host: {file name: text}}: the roles' templates rendered by ansible-playbook (EXTRA: its
    options, e.g. --limit) for the fixture's hosts, whose link ends hold LINK_KEYS as their public keys."""
    if not (BIN / "ansible-playbook").exists():
        pytest.skip(f"ansible-playbook is not in {BIN} (bash tests/infra/install-tools.sh installs it)")
    from chexops.infra.inventory import build_inventory, load_outputs, write_inventory

    inventory = work / "hosts.yml"
    write_inventory(build_inventory(load_outputs(FIXTURE)), inventory)
    # group_vars next to the playbook's inventory are what a real run reads: link them in.
    shutil.copytree(ANSIBLE / "group_vars", work / "group_vars")
    out = work / "out"
    for host, key in link_keys.items():
        (out / host).mkdir(parents=True)
        (out / host / "wg-chexops.pub").write_text(key + "\n")
    role = work / "roles" / "render"
    for part in ("tasks", "defaults", "handlers"):
        (role / part).mkdir(parents=True)
    defaults: dict = {}
    for path in ("kubernetes/defaults", "kubernetes/vars", "common/defaults"):
        defaults.update(yaml.safe_load((ANSIBLE / "roles" / path / "main.yml").read_text()))
    defaults["common_pending_install"] = False
    (role / "defaults" / "main.yml").write_text(yaml.safe_dump(defaults))
    (role / "tasks" / "main.yml").write_text(RENDER_TASKS.replace("ANSIBLE", str(ANSIBLE)))
    (role / "handlers" / "main.yml").write_text(RENDER_HANDLERS)
    (role / "templates").symlink_to(ANSIBLE / "roles" / "kubernetes" / "templates")  # the included tasks' templates
    playbook = work / "render.yml"
    playbook.write_text(RENDER_PLAY.replace("OUT", str(out)))
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *extra],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    # Paths under OUT (each end's /etc/wireguard) as "OUT", so that two renders compare.
    return {h.name: {f.name: f.read_text().replace(str(out), "OUT") for f in h.iterdir()} for h in out.iterdir()}


@pytest.fixture(scope="module")
def link_keys() -> dict[str, str]:
    return {host: _link_key() for host in LINK_ENDS}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, link_keys):
    """{host: {file name: text}} for the fixture's four hosts (a full run)."""
    return _render(tmp_path_factory.mktemp("render"), link_keys)


def _k3s(rendered, host):
    return yaml.safe_load(rendered[host]["k3s-config.yaml"])


def _tf_default(name: str):
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed")
    with (REPO / "terraform" / "variables.tf").open() as handle:
        for item in hcl2.load(handle)["variable"]:
            if f'"{name}"' in item:
                value = item[f'"{name}"']["default"]
                return value.strip('"') if isinstance(value, str) else value
    raise AssertionError(name)


def test_every_node_talks_to_the_server_on_a_reachable_private_address(rendered):
    server = _k3s(rendered, "node1")
    assert server["node-ip"] == server["advertise-address"] == "192.168.50.11"
    assert "flannel-external-ip" not in server, "floating IPs as flannel endpoints hairpin through the router"
    assert server["flannel-backend"] == "vxlan"
    assert "203.0.113.10" in server["tls-san"]  # operators' kubectl through the floating IP
    for agent in ("node2", "node3"):
        config = _k3s(rendered, agent)
        assert config["server"] == "https://192.168.50.11:6443"
        assert config["node-ip"] == f"192.168.50.1{agent[-1]}"
    gpu = _k3s(rendered, "gpu1")
    link_cidr = _tf_default("site_link_cidr")
    assert gpu["server"] == "https://192.168.50.11:6443"  # through the site link, not the internet
    assert gpu["node-ip"] == "10.99.0.2" and gpu["node-ip"].startswith(link_cidr.rsplit(".", 1)[0])
    assert "node-external-ip" not in gpu
    assert "chexops.io/gpu=true" in gpu["node-label"] and "nvidia.com/gpu=true:NoSchedule" in gpu["node-taint"]


def test_site_link_ends_point_at_each_other(rendered, link_keys):
    port = _tf_default("site_link_port")
    node1, gpu1 = rendered["node1"]["wg-chexops.conf"], rendered["gpu1"]["wg-chexops.conf"]
    assert "Address = 10.99.0.1/24" in node1 and f"ListenPort = {port}" in node1
    assert f"Endpoint = 198.51.100.20:{port}" in node1 and "AllowedIPs = 10.99.0.2/32\n" in node1
    assert "Address = 10.99.0.2/24" in gpu1
    assert f"Endpoint = 203.0.113.10:{port}" in gpu1 and "AllowedIPs = 10.99.0.1/32, 192.168.50.0/24" in gpu1
    assert "PrivateKey" not in node1 + gpu1 and "PostUp = wg set %i private-key" in node1
    assert f"PublicKey = {link_keys['gpu1']}\n" in node1 and f"PublicKey = {link_keys['node1']}\n" in gpu1
    assert node1.count("[Peer]") == gpu1.count("[Peer]") == 1
    assert not {"node2", "node3"} & {h for h, files in rendered.items() if "wg-chexops.conf" in files}


def test_a_limited_run_keeps_the_site_link(rendered, link_keys, tmp_path):
    """`--limit gpu1` after a re-lease (a new machine: a new key on gpu1) writes the same link as a full
    run: gpu1 keeps node1 as its peer (the peers are the inventory's, each key read on its end), and
    node1, outside the play, gets gpu1's new key."""
    new_key = _link_key()
    limited = _render(tmp_path, {**link_keys, "gpu1": new_key}, "--limit", "gpu1")
    assert "k3s-config.yaml" not in limited["node1"], "node1 is outside the play"
    assert limited["gpu1"]["wg-chexops.conf"] == rendered["gpu1"]["wg-chexops.conf"]
    node1 = limited["node1"]["wg-chexops.conf"]
    assert node1 == rendered["node1"]["wg-chexops.conf"].replace(link_keys["gpu1"], new_key)
    assert f"PublicKey = {new_key}\n" in node1


def _nft(rendered, host) -> str:
    return rendered[host]["nftables.conf"]


def test_host_firewalls_match_terraform_and_k3s(rendered):
    port = _tf_default("site_link_port")
    node1, gpu1, node2 = _nft(rendered, "node1"), _nft(rendered, "gpu1"), _nft(rendered, "node2")
    # The link: each end accepts WireGuard only from the other end's floating IP (the same rule as
    # Terraform's edge_site_link / gpu site_link security group rules).
    assert f"udp dport {port} ip saddr {{ 198.51.100.20/32 }} accept" in node1
    assert f"udp dport {port} ip saddr {{ 203.0.113.10/32 }} accept" in gpu1
    assert f"udp dport {port}" not in node2
    # Inside: the private network, pods, services and the link are trusted everywhere; no node
    # trusts another's public address any more.
    for text in (node1, gpu1, node2):
        assert re.search(
            r"elements = \{ 192\.168\.50\.0/24, 10\.42\.0\.0/16, 10\.43\.0\.0/16, 10\.99\.0\.0/24 \}", text
        ), text
        assert "203.0.113.10/32, " not in text.split("set ssh_v4")[0]
        assert '"wg-chexops"' in text
        # SSH only from Terraform's ssh_allowed_cidrs, never from anywhere.
        assert re.search(r"set ssh_v4 \{[^}]*elements = \{ 198\.51\.100\.0/24 \}", text)
        assert "0.0.0.0/0" not in text.split("set ssh_v4")[1].split("}")[0]
    # Ingress on node1 from Terraform's ingress_allowed_cidrs (the inventory), nowhere else.
    assert "tcp dport 443 ip saddr { 0.0.0.0/0 } accept" in node1 and "dport 443" not in gpu1 + node2
    # The API on node1 from operators only (the GPU node uses the link).
    assert "tcp dport 6443 ip saddr { 198.51.100.0/24 } accept" in node1


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed (tests/infra/install-tools.sh)")
def test_rendered_rules_are_valid_nftables(rendered, tmp_path):
    for host in ("node1", "gpu1"):
        path = tmp_path / f"{host}.nft"
        path.write_text(_nft(rendered, host))
        proc = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
            pytest.skip("nft -c needs CAP_NET_ADMIN here")
        assert proc.returncode == 0, f"{host}: {proc.stderr}"


def test_gpu_runtime_class_and_platform_storage_class(rendered):
    docs = list(yaml.safe_load_all(rendered["node1"]["cluster-classes.yaml"]))
    runtime = next(d for d in docs if d["kind"] == "RuntimeClass")
    assert runtime["metadata"]["name"] == "nvidia" and runtime["handler"] == "nvidia"
    assert runtime["scheduling"]["nodeSelector"] == {"chexops.io/gpu": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in runtime["scheduling"][
        "tolerations"
    ]
    storage = next(d for d in docs if d["kind"] == "StorageClass")
    assert storage["metadata"]["name"] == "chexops-platform" and storage["provisioner"] == "rancher.io/local-path"
    assert storage["reclaimPolicy"] == "Retain" and storage["volumeBindingMode"] == "WaitForFirstConsumer"
    assert storage["parameters"]["pathPattern"] == "{{ .PVC.Namespace }}/{{ .PVC.Name }}"
    assert storage["allowedTopologies"][0]["matchLabelExpressions"][0]["values"] == ["node1"]
    # ... and k3s's local-path root is on node1's platform volume (the mount the volumes role makes).
    mount = json.loads(FIXTURE.read_text())["volumes"]["value"]["platform"]["mount_point"]
    assert _k3s(rendered, "node1")["default-local-storage-path"] == f"{mount}/k3s-storage"


def test_every_node_pulls_the_in_cluster_registry_through_its_node_port(rendered):
    """k3s's registries.yaml on every node maps the registry's Service name (what the overlays'
    images name) to its NodePort on the node itself (k8s/platform/registry)."""
    platform = REPO / "k8s" / "platform" / "registry"
    namespace = yaml.safe_load((platform / "kustomization.yaml").read_text())["namespace"]
    services = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((platform / "registry.yaml").read_text())
        if d and d["kind"] == "Service"
    }
    (port,) = services["registry"]["spec"]["ports"]
    (node_port,) = [p for s in services.values() if s["spec"].get("type") == "NodePort" for p in s["spec"]["ports"]]
    name = f"registry.{namespace}.svc.cluster.local:{port['port']}"
    for env in ("staging", "production"):
        images = yaml.safe_load((REPO / "k8s" / "chexops" / "overlays" / env / "kustomization.yaml").read_text())[
            "images"
        ]
        assert {i["newName"].split("/")[0] for i in images} == {name}, env
    assert set(rendered) == {"node1", "node2", "node3", "gpu1"}
    for host, files in rendered.items():
        config = yaml.safe_load(files["registries.yaml"])
        assert config["mirrors"] == {name: {"endpoint": [f"http://127.0.0.1:{node_port['nodePort']}"]}}, host
        # The registry asks for its login (htpasswd): containerd logs in at the mirror's endpoint.
        (login,) = config["configs"].values()
        assert set(config["configs"]) == {f"127.0.0.1:{node_port['nodePort']}"} and login["auth"]["username"], host


FORK_URL = "git@github.com:me/chexops.git"
REQUIRED = "chexops_repo_url is required"
DIFFERENT = "differ from what Argo CD's Applications follow"


def _validate_argo(
    tmp_path: Path, roles: Path, variables: dict, tasks_from: str = "validate"
) -> subprocess.CompletedProcess:
    """The argo role's validation (tasks/`tasks_from`.yml), run by Ansible on localhost with the roles under `roles`."""
    if not (BIN / "ansible-playbook").exists():
        pytest.skip(f"ansible-playbook is not in {BIN}")
    playbook = tmp_path / "validate.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  connection: local\n  tasks:\n"
        f"    - ansible.builtin.include_role:\n        name: argo\n        tasks_from: {tasks_from}\n"
    )
    extra = ["-e", json.dumps(variables)] if variables else []
    env = {**_env(tmp_path), "ANSIBLE_ROLES_PATH": str(roles)}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture()
def fork(tmp_path) -> Path:
    """A fork's checkout: this repository's argo role, and argocd/source/gitops-source.yaml naming FORK_URL."""
    checkout = tmp_path / "fork"
    shutil.copytree(ANSIBLE / "roles" / "argo", checkout / "ansible" / "roles" / "argo")
    source = yaml.safe_load((REPO / "argocd" / "source" / "gitops-source.yaml").read_text())
    source["data"]["repoURL"] = FORK_URL
    (checkout / "argocd" / "source").mkdir(parents=True)
    (checkout / "argocd" / "source" / "gitops-source.yaml").write_text(yaml.safe_dump(source))
    return checkout / "ansible" / "roles"


@pytest.mark.parametrize(
    ("variables", "error"),
    [
        ({}, REQUIRED),
        ({"chexops_repo_url": "https://github.com/chexops/chexops.git"}, REQUIRED),  # the old placeholder
        ({"chexops_repo_url": "github.com/me/chexops"}, REQUIRED),
        ({"chexops_repo_url": "https://github.com/me/another.git"}, DIFFERENT),  # not what the children follow
        ({"chexops_repo_url": FORK_URL, "chexops_repo_revision": "dev"}, DIFFERENT),
        ({"chexops_repo_url": FORK_URL}, None),
    ],
    ids=["absent", "placeholder", "malformed", "other-repo", "other-revision", "same"],
)
def test_repo_url_is_required_and_validated(tmp_path, fork, variables, error):
    proc = _validate_argo(tmp_path, fork, variables)
    if error is None:
        assert proc.returncode == 0, proc.stdout[-3000:]
    else:
        assert proc.returncode != 0 and error in " ".join(proc.stdout.split()), proc.stdout[-3000:]
    assert "chexops_repo_url" not in (ANSIBLE / "group_vars" / "all" / "main.yml").read_text().split("#")[-1]


def test_repo_url_is_checked_against_this_checkouts_gitops_source(tmp_path):
    """The role reads argocd/source/gitops-source.yaml of the checkout it runs from (here: this one)."""
    committed = yaml.safe_load((REPO / "argocd" / "source" / "gitops-source.yaml").read_text())["data"]["repoURL"]
    assert committed != FORK_URL
    proc = _validate_argo(tmp_path, ANSIBLE / "roles", {"chexops_repo_url": FORK_URL})
    text = " ".join(proc.stdout.split())
    assert proc.returncode != 0 and DIFFERENT in text, proc.stdout[-3000:]
    assert f"{REPO / 'argocd' / 'source' / 'gitops-source.yaml'} ('{committed}' at" in text, proc.stdout[-3000:]


WEBHOOK_REQUIRED = "The webhook host is required"


@pytest.mark.parametrize(
    ("variables", "error"),
    [
        ({}, WEBHOOK_REQUIRED),  # no chexops_webhook_host and no floating IP
        ({"chexops_public_ip": None}, WEBHOOK_REQUIRED),  # a private node
        ({"chexops_public_ip": "203.0.113.300"}, WEBHOOK_REQUIRED),
        ({"chexops_webhook_host": "hooks .example.org"}, WEBHOOK_REQUIRED),
        ({"chexops_webhook_host": "https://hooks.example.org"}, WEBHOOK_REQUIRED),  # a host, not a URL
        ({"chexops_public_ip": "203.0.113.10"}, None),
        ({"chexops_public_ip": None, "chexops_webhook_host": "hooks.example.org"}, None),
    ],
    ids=["absent", "private", "bad-ip", "bad-name", "url", "floating-ip", "dns-name"],
)
def test_webhook_host_is_required_and_validated(tmp_path, variables, error):
    """The argo role's webhook host: chexops_webhook_host, else the server's chexops_public_ip."""
    proc = _validate_argo(tmp_path, ANSIBLE / "roles", variables, tasks_from="webhook_host")
    if error is None:
        assert proc.returncode == 0, proc.stdout[-3000:]
    else:
        assert proc.returncode != 0 and error in " ".join(proc.stdout.split()), proc.stdout[-3000:]


@pytest.mark.parametrize("cidrs", [None, ["0.0.0.0/0"]], ids=["absent", "open"])
def test_ssh_firewall_has_no_open_fallback(tmp_path, cidrs):
    """The common role stops when the SSH sources are missing or open (run in --check: writes nothing)."""
    if not (BIN / "ansible-playbook").exists():
        pytest.skip(f"ansible-playbook is not in {BIN}")
    playbook = tmp_path / "firewall.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  connection: local\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: common\n        tasks_from: firewall\n"
    )
    extra = ["-e", json.dumps({"chexops_ssh_allowed_cidrs": cidrs})] if cidrs is not None else []
    env = {**_env(tmp_path), "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles")}
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "--check", "-i", "localhost,", str(playbook), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "come from Terraform's ssh_allowed_cidrs" in " ".join(proc.stdout.split()), proc.stdout[-3000:]
