"""`chexops infra preflight`: before `terraform plan`, look up on each cloud what the Terraform
settings name (flavors, images, networks, the floating-IP pool, the key pair), and name every
missing one clearly, instead of a provider error halfway through an apply.

The settings are read from the Terraform files themselves, as Terraform would resolve them:
`variables.tf` defaults, then `terraform.tfvars`, then `*.auto.tfvars(.json)` in lexical order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chexops.core.errors import UserInputError
from chexops.infra.clouds import Cloud
from chexops.infra.openstack import identity, restricted_message, translated

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Look-ups (openstacksdk proxies)
# ---------------------------------------------------------------------------------------------


def _names(items, skip_prefix: str = "") -> str:
    names = sorted({str(i.name) for i in items if i.name and not str(i.name).startswith(skip_prefix or "\0")})
    shown = ", ".join(names[:15]) + (f", ... ({len(names)} in all)" if len(names) > 15 else "")
    return shown or "none"


def _find(finder: Callable, name: str):
    """A find_* proxy call; None when nothing matches (openstacksdk raises NotFoundException)."""
    from openstack import exceptions as sdk

    try:
        return finder(name, ignore_missing=False)
    except sdk.NotFoundException:
        return None


def find_flavor(cloud: Cloud, name_or_id: str):
    """The flavor with this name or id, or UserInputError naming the flavors there are."""
    conn = cloud.connection
    with translated(cloud, f"flavor '{name_or_id}'"):
        flavor = _find(conn.compute.find_flavor, name_or_id)
        if flavor is not None:
            return flavor
        known = _names(conn.compute.flavors(), skip_prefix="reservation:")
    raise UserInputError(f"Flavor '{name_or_id}' does not exist on cloud '{cloud.name}' (flavors: {known}).")


def find_image(cloud: Cloud, name: str):
    conn = cloud.connection
    with translated(cloud, f"image '{name}'"):
        image = _find(conn.image.find_image, name)
        if image is not None:
            return image
        known = _names(conn.image.images())
    raise UserInputError(f"Image '{name}' does not exist on cloud '{cloud.name}' (images: {known}).")


def find_network(cloud: Cloud, name: str, external: bool = False):
    conn = cloud.connection
    with translated(cloud, f"network '{name}'"):
        network = _find(conn.network.find_network, name)
        if network is not None and (not external or network.is_router_external):
            return network
        pools = _names(conn.network.networks(is_router_external=True))
        others = _names(conn.network.networks()) if not external else ""
    if external and network is not None:
        raise UserInputError(
            f"Network '{name}' on cloud '{cloud.name}' is not external, so it is no floating-IP pool (pools: {pools})."
        )
    if external:
        raise UserInputError(f"Floating-IP pool '{name}' does not exist on cloud '{cloud.name}' (pools: {pools}).")
    raise UserInputError(f"Network '{name}' does not exist on cloud '{cloud.name}' (networks: {others}).")


def find_floating_ip(cloud: Cloud, address: str):
    """A floating IP of the project (a reserved one: `<role>_floating_ips`), or UserInputError: its lease ended."""
    with translated(cloud, f"floating IP {address}"):
        found = list(cloud.connection.network.ips(floating_ip_address=address))
    if found:
        return found[0]
    raise UserInputError(
        f"Floating IP {address} is not in the project on cloud '{cloud.name}': its floating-IP reservation has ended. "
        "Run `chexops infra lease create ... --floating-ips 1` again (or remove the address from the tfvars file to "
        "allocate from the pool)."
    )


def find_keypair(cloud: Cloud, name: str):
    conn = cloud.connection
    with translated(cloud, f"key pair '{name}'"):
        keypair = _find(conn.compute.find_keypair, name)
        if keypair is not None:
            return keypair
        known = _names(conn.compute.keypairs())
    raise UserInputError(
        f"Key pair '{name}' does not exist on cloud '{cloud.name}' (key pairs: {known}): upload the same "
        "public key under the same name on every site (Compute > Key Pairs)."
    )


# ---------------------------------------------------------------------------------------------
# The Terraform settings
# ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """python-hcl2 keeps string literals' quotes: '"x"' -> 'x', recursively."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _load_hcl(path: Path) -> dict[str, Any]:
    try:
        import hcl2
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise UserInputError(
            "Reading Terraform files needs python-hcl2: pip install -e '.[infra]' from the checkout."
        ) from exc
    try:
        with path.open(encoding="utf-8") as handle:
            return hcl2.load(handle)
    except Exception as exc:  # noqa: BLE001 - python-hcl2 raises lark's many error types
        raise UserInputError(f"{path} is not valid HCL: {exc}") from exc


def terraform_settings(tf_dir: Path) -> dict[str, Any]:
    """Variable values as Terraform resolves them from the files (no -var/-var-file/TF_VAR_)."""
    variables = tf_dir / "variables.tf"
    if not variables.is_file():
        raise UserInputError(f"{variables} does not exist: pass --tf-dir, the repository's terraform/ directory.")
    values: dict[str, Any] = {}
    for block in _load_hcl(variables).get("variable", []):
        for name, body in block.items():
            if "default" in body:
                values[_plain(name)] = _plain(body["default"])
    files = [tf_dir / "terraform.tfvars"] if (tf_dir / "terraform.tfvars").is_file() else []
    files += sorted(p for p in tf_dir.iterdir() if p.name.endswith((".auto.tfvars", ".auto.tfvars.json")))
    for path in files:
        if path.suffix == ".json":
            try:
                values.update(json.loads(path.read_text(encoding="utf-8")))
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{path} is not JSON: {exc}") from exc
        else:
            values.update({k: _plain(v) for k, v in _load_hcl(path).items()})
    values["_gpu_flavor"] = _gpu_flavor(tf_dir)
    return values


def _gpu_flavor(tf_dir: Path) -> str:
    """The flavor the GPU instance boots (a literal in modules/gpu_node/main.tf)."""
    for block in _load_hcl(tf_dir / "modules" / "gpu_node" / "main.tf").get("resource", []):
        for body in (block.get('"openstack_compute_instance_v2"') or {}).values():
            if "flavor_name" in body:
                return str(_plain(body["flavor_name"]))
    raise UserInputError(f"{tf_dir}/modules/gpu_node/main.tf boots no flavor_name: is it this repository's terraform/?")


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    cloud: str
    kind: str
    name: str
    setting: str
    ok: bool
    detail: str


def _required(settings: dict[str, Any], key: str, hint: str) -> str:
    value = settings.get(key)
    if value in (None, ""):
        raise UserInputError(f"Terraform variable {key} is not set ({hint}).")
    return str(value)


def plan_checks(settings: dict[str, Any]) -> list[tuple[str, str, str, str, Callable]]:
    """(cloud variable, kind, name, setting, look-up) for everything the plan will need."""
    key_pair = _required(settings, "key_pair", "terraform.tfvars")
    external = str(settings.get("external_network_name", ""))
    checks = [
        (
            "kvm_cloud",
            "flavor",
            _required(settings, "kvm_reservation_id", "run `chexops infra lease create --role kvm`"),
            "kvm_reservation_id (the flavor Blazar reserved)",
            find_flavor,
        ),
        ("kvm_cloud", "image", str(settings.get("kvm_image_name", "")), "kvm_image_name", find_image),
        (
            "kvm_cloud",
            "floating-IP pool",
            external,
            "external_network_name",
            lambda cloud, name: find_network(cloud, name, external=True),
        ),
        ("kvm_cloud", "key pair", key_pair, "key_pair", find_keypair),
    ]
    checks += _reserved_ip_checks(settings, "kvm_cloud", "kvm_floating_ips")
    if settings.get("gpu_enabled", True) in (True, "true"):
        checks += [
            ("chi_cloud", "flavor", settings["_gpu_flavor"], "modules/gpu_node (bare metal)", find_flavor),
            ("chi_cloud", "image", str(settings.get("gpu_image_name", "")), "gpu_image_name", find_image),
            ("chi_cloud", "network", str(settings.get("gpu_network_name", "")), "gpu_network_name", find_network),
            (
                "chi_cloud",
                "floating-IP pool",
                external,
                "external_network_name",
                lambda cloud, name: find_network(cloud, name, external=True),
            ),
            ("chi_cloud", "key pair", key_pair, "key_pair", find_keypair),
        ]
        checks += _reserved_ip_checks(settings, "chi_cloud", "gpu_floating_ips")
    return checks


def _reserved_ip_checks(
    settings: dict[str, Any], cloud_var: str, key: str
) -> list[tuple[str, str, str, str, Callable]]:
    """The reserved floating IP Terraform will use (the first of `key`), which must still be in the project."""
    addresses = settings.get(key) or []
    if not isinstance(addresses, list):
        raise UserInputError(f"Terraform variable {key} must be a list of addresses, not {addresses!r}.")
    return [(cloud_var, "reserved floating IP", str(addresses[0]), key, find_floating_ip)] if addresses else []


def credential_check(cloud: Cloud) -> Check:
    """Blazar creates a lease only with an Unrestricted application credential (a restricted one gets HTTP 500)."""
    who = identity(cloud)
    name = who.credential_name or "(not an application credential)"
    setting = "clouds.yaml (Unrestricted, for Blazar)"
    if who.restricted:
        return Check(cloud.name, "credential", name, setting, False, restricted_message(cloud, who))
    return Check(cloud.name, "credential", name, setting, True, f"user {who.user_id}, unrestricted")


def run_checks(settings: dict[str, Any], connect: Callable[[str], Cloud]) -> list[Check]:
    """Every look-up, each reported (a missing one does not hide the next); first, per cloud, the credential."""
    clouds: dict[str, Cloud] = {}
    results = []
    for cloud_var, kind, name, setting, lookup in plan_checks(settings):
        cloud_name = _required(settings, cloud_var, "terraform.tfvars")
        if cloud_name not in clouds:
            clouds[cloud_name] = connect(cloud_name)
            results.append(credential_check(clouds[cloud_name]))
            log.info("credential of %s: %s", cloud_name, "unrestricted" if results[-1].ok else "RESTRICTED")
        try:
            found = lookup(clouds[cloud_name], name)
            results.append(Check(cloud_name, kind, name, setting, True, f"id {found.id}"))
        except UserInputError as exc:
            if "rejected the credentials" in str(exc):
                raise
            results.append(Check(cloud_name, kind, name, setting, False, str(exc)))
        log.info("%s %s '%s' on %s: %s", kind, setting, name, cloud_name, "found" if results[-1].ok else "MISSING")
    return results
