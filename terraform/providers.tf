# Credentials never live in this repository: each provider names an entry of clouds.yaml
# (~/.config/openstack/clouds.yaml, or $OS_CLIENT_CONFIG_FILE), the same file `chexops infra lease`
# reads. Chameleon sites are separate OpenStack clouds, hence one aliased provider per site.

provider "openstack" {
  alias = "kvm"
  cloud = var.kvm_cloud
}

provider "openstack" {
  alias = "chi"
  cloud = var.chi_cloud
}
