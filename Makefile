# chexops: `make demo` runs the whole lifecycle on this machine; `make test` runs the test suite (what CI runs),
# `make check` its fast tier (the tests not marked slow: no servers, training, child CLIs, databases or browsers).
# Each creates the virtual environment on first use (torch==2.13.0 first, then the project).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chexops-installed
# `chexops triton serve`: the tritonserver that nvidia-pytriton ships (--no-deps: its metadata asks numpy < 2, for its
# Python binding, unused here), and the Python backend stub's own venv, whose numpy must be below 2 (pyproject.toml)
TRITON := nvidia-pytriton==0.7.0
TRITON_STUB := numpy==1.26.4 onnxruntime==1.32.0 pillow==13.0.0 pydicom==3.0.1
export CHEXOPS_HOME ?= $(CURDIR)/.chexops

.PHONY: demo demo-pacs test check lint serve venv clean
.PHONY: infra-init infra-plan infra-apply inventory site infra-check drift destroy rebuild-after-lease

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,serve,infra,deliver,pacs,dev]'
	$(BIN)/pip install --quiet --no-deps $(TRITON)
	test -x $(VENV)-triton/bin/python || $(PYTHON) -m venv $(VENV)-triton
	$(VENV)-triton/bin/pip install --quiet $(TRITON_STUB)
	touch $@

demo: $(STAMP)
	$(BIN)/chexops demo

demo-pacs: $(STAMP)  # then the PACS flow through a local Orthanc (says how to install it when missing)
	$(BIN)/chexops demo --pacs

serve: $(STAMP)  # the registry's candidate (chexops serve's default reference), resolved to its exact Bento model
	$(BIN)/chexops serve

lint: $(STAMP)  # the house's rules (docs/architecture.md): ruff, then the layer contracts
	$(BIN)/ruff check training bentos tests
	$(BIN)/lint-imports

test: $(STAMP) lint
	VENV=$(VENV) bash tests/install-tools.sh
	$(BIN)/python -m pytest --durations=15; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

check: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow"; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

clean:
	rm -rf $(CHEXOPS_HOME)

# --- Chameleon: the operator's targets (docs/operations.md, "The operator's targets") --------------------------------
# Run from the repository root, after `chexops infra lease create` (step 1). Each prints what it will touch first;
# infra-apply and destroy ask before changing anything (YES=1 answers yes). Credentials: clouds.yaml (OS_CLOUD entries
# kvm_tacc, chi_uc/chi_tacc) for Terraform; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (EC2 credentials) for the state
# in the object store; your SSH key and the vault password for site; the kubeconfig site writes for infra-check.
CONFIRM = $(if $(YES),--yes)
SITE_ARGS ?= $(if $(ANSIBLE_VAULT_PASSWORD_FILE),,--ask-vault-pass)

infra-init: $(STAMP)  # terraform init with the remote state of terraform/backend.hcl (copy backend.hcl.example)
	$(BIN)/chexops infra init

infra-plan: $(STAMP)  # what terraform apply would create, change, destroy
	$(BIN)/chexops infra plan

infra-apply: $(STAMP)  # the plan, listed, then applied after asking
	$(BIN)/chexops infra apply $(CONFIRM)

inventory: $(STAMP)  # ansible/inventory/hosts.yml from terraform output
	$(BIN)/chexops infra inventory

site: $(STAMP)  # the inventory's hosts, listed, then ansible-playbook site.yml (SITE_ARGS="--tags common" ...)
	$(BIN)/chexops infra site -- $(SITE_ARGS)

infra-check: $(STAMP)  # the post-deploy smoke test: exit 0 when every row passes
	$(BIN)/chexops infra check

drift: $(STAMP)  # terraform plan -detailed-exitcode: exit 0 none, 3 drift, 1 terraform failed
	$(BIN)/chexops infra drift

VOLUME_CLOUD ?= kvm_tacc
destroy: $(STAMP)  # snapshots of the volumes first, then everything but the volumes (prevent_destroy), after asking
	$(BIN)/chexops infra snapshot --cloud $(VOLUME_CLOUD) --keep 3
	$(BIN)/chexops infra destroy $(CONFIRM)

rebuild-after-lease: $(STAMP)  # after a new lease (chexops infra lease create): instances, inventory, site, check
	$(MAKE) infra-apply inventory site infra-check
