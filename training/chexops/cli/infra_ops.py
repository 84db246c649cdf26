"""`chexops infra init|plan|apply|destroy|drift|site|check`: the operator's entry points (the Makefile's
`infra-*` targets), each printing what it will touch before it touches it.

Registered on the `chexops infra` group of `chexops.cli.infra`. Exit codes: 0 done, 1 terraform,
Ansible or a check failed, 2 bad input (a missing file or tool, a refused confirmation), 3 drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from chexops.cli.infra import DEFAULT_INVENTORY, infra, tf_dir_option
from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError

BACKEND_FILE = "backend.hcl"
PLANFILE = "tfplan"

run_tf_dir_option = tf_dir_option("Terraform root to run in (terraform -chdir=DIR).")
yes_option = click.option("--yes", is_flag=True, help="Do not ask before changing anything.")


def _confirm(question: str, yes: bool) -> None:
    """Ask on stderr; without a terminal, refuse unless --yes was given."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserInputError(f"{question} Not asked without a terminal: pass --yes.")
    if not click.confirm(question, default=False, err=True):
        raise UserInputError("Cancelled: nothing was changed.")


def _terraform(tf_dir: Path):
    from chexops.infra.terraform import Terraform

    return Terraform(tf_dir)


@infra.command("init")
@run_tf_dir_option
@click.option(
    "--backend-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Partial S3 backend configuration (copy terraform/backend.hcl.example) [default: TF_DIR/backend.hcl].",
)
@click.option("--reconfigure", is_flag=True, help="Forget the previous backend settings (terraform init -reconfigure).")
@click.option("--migrate-state", is_flag=True, help="Copy an existing local terraform.tfstate into the remote state.")
@result_output
def init_cmd(tf_dir: Path, backend_config: Path | None, reconfigure: bool, migrate_state: bool) -> Output:
    """`terraform init` against the remote state (S3 API of Chameleon's object store, locked)."""
    if backend_config is None and (tf_dir / BACKEND_FILE).is_file():
        backend_config = tf_dir / BACKEND_FILE
    elif backend_config is None and (tf_dir / f"{BACKEND_FILE}.example").is_file():
        raise UserInputError(
            f"No {tf_dir / BACKEND_FILE}: copy {tf_dir / BACKEND_FILE}.example to it and fill in the bucket and "
            'endpoint (docs/operations.md, "Remote state"), or pass --backend-config FILE.'
        )
    _terraform(tf_dir).init(backend_config, reconfigure=reconfigure, migrate=migrate_state)
    where = f"the remote state of {backend_config}" if backend_config else "the backend its files declare"
    return Output(
        {"tf_dir": str(tf_dir), "backend_config": str(backend_config) if backend_config else None},
        f"Initialised {tf_dir} with {where}.",
    )


@infra.command("plan")
@run_tf_dir_option
@result_output
def plan_cmd(tf_dir: Path) -> Output:
    """Save a plan to TF_DIR/tfplan and list what it would create, change and destroy."""
    planfile = tf_dir / PLANFILE
    summary = _terraform(tf_dir).plan(planfile)
    lines = summary.lines() + [f"Saved to {planfile}: `chexops infra apply` applies a fresh plan after asking."]
    return Output(summary, "\n".join(lines))


@infra.command("apply")
@run_tf_dir_option
@yes_option
@result_output
def apply_cmd(tf_dir: Path, yes: bool) -> Output:
    """Plan, list what the plan touches, ask, then apply exactly that plan."""
    planfile = tf_dir / PLANFILE
    tf = _terraform(tf_dir)
    summary = tf.plan(planfile)
    click.echo("\n".join(summary.lines()), err=True)
    if summary.empty:
        return Output(summary, "No changes: nothing applied.")
    _confirm(f"Apply these {len(summary.changes)} changes in {tf_dir}?", yes)
    tf.apply(planfile)
    return Output(summary, "\n".join([*summary.lines(), "Applied. Next: make inventory."]))


@infra.command("destroy")
@run_tf_dir_option
@yes_option
@click.option(
    "--keep",
    multiple=True,
    default=None,
    help="Resource type or address pattern to keep (repeatable; default: the volumes and the object-store container).",
)
@result_output
def destroy_cmd(tf_dir: Path, yes: bool, keep: tuple[str, ...]) -> Output:
    """Destroy everything in the state but the volumes (prevent_destroy) and the object-store container,
    after listing both and asking."""
    from chexops.infra.terraform import KEPT_TYPES

    tf = _terraform(tf_dir)
    targets, kept = tf.destroy_targets(keep or KEPT_TYPES)
    kept_lines = [f"  keeps   {address}" for address in kept]
    if not targets:
        return Output({"destroyed": [], "kept": kept}, "\n".join(["Nothing to destroy.", *kept_lines]))
    planfile = tf_dir / PLANFILE
    summary = tf.plan(planfile, destroy=True, targets=targets)
    click.echo("\n".join(summary.lines() + kept_lines), err=True)
    _confirm(f"Destroy these {summary.destroy} resources in {tf_dir} (keeping {len(kept)})?", yes)
    tf.apply(planfile)
    destroyed = [c.address for c in summary.changes if "delete" in c.actions]
    return Output(
        {"destroyed": destroyed, "kept": kept},
        "\n".join([f"Destroyed {len(destroyed)} resources; kept {len(kept)}:", *kept_lines]),
    )


@infra.command("drift")
@run_tf_dir_option
@result_output
def drift_cmd(tf_dir: Path) -> Output:
    """`terraform plan -detailed-exitcode`: exit 0 when the cloud matches terraform/, 3 when it drifted,
    1 when terraform fails."""
    from chexops.infra.terraform import DriftFound

    drifted, summary = _terraform(tf_dir).drift(tf_dir / PLANFILE)
    if not drifted:
        return Output(summary, f"No drift: {tf_dir} matches the infrastructure.")
    refusal = DriftFound(
        f"Drift in {tf_dir}: {len(summary.changes)} resources differ ({len(summary.drifted)} changed outside "
        "Terraform). Review with `make infra-plan`."
    )
    return Output(summary, "\n".join(summary.lines()), refusal)


@infra.command("site")
@click.option(
    "--inventory",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_INVENTORY,
    show_default=True,
    help="Inventory written by `chexops infra inventory`.",
)
@click.option(
    "--ansible-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("ansible"),
    show_default=True,
    help="Folder holding site.yml and ansible.cfg.",
)
@click.argument("ansible_args", nargs=-1, type=click.UNPROCESSED)
@result_output
def site_cmd(inventory: Path, ansible_dir: Path, ansible_args: tuple[str, ...]) -> Output:
    """List the inventory's hosts, then run `ansible-playbook site.yml` on them (ANSIBLE_ARGS after `--`,
    e.g. `-- --ask-vault-pass --tags common`)."""
    from chexops.infra.site import run_site

    result = run_site(ansible_dir, inventory, list(ansible_args))
    return Output(result, f"site.yml converged {len(result.hosts)} hosts: {', '.join(result.hosts)}.")


@infra.command("check")
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="KUBECONFIG",
    help="Kubeconfig of the cluster (default: $KUBECONFIG, then ansible/.artifacts/kubeconfig).",
)
@click.option("--gpu/--no-gpu", default=True, show_default=True, help="Run nvidia-smi in a pod on the GPU node.")
@click.option("--gpu-image", default=None, help="Image of the nvidia-smi pod (default: a CUDA base image).")
@click.option(
    "--timeout",
    type=click.FloatRange(1, 1800),
    default=300,
    show_default=True,
    help="Seconds the nvidia-smi pod may take to finish.",
)
@result_output
def check_cmd(kubeconfig: Path | None, gpu: bool, gpu_image: str | None, timeout: float) -> Output:
    """Post-deploy smoke test: nodes Ready, nvidia-smi on the GPU node, Argo CD Applications Synced and
    Healthy, MLflow, MinIO, Prometheus and the registry answering. Exit 0 when all pass, 1 otherwise."""
    from chexops.infra.check import GPU_IMAGE, ChecksFailed, run_checks

    default = Path("ansible") / ".artifacts" / "kubeconfig"
    if kubeconfig is None and default.is_file():
        kubeconfig = default
    report = run_checks(kubeconfig, gpu=gpu, image=gpu_image or GPU_IMAGE, timeout=timeout)
    failed = [c for c in report.checks if not c.ok]
    refusal = ChecksFailed(f"{len(failed)} of {len(report.checks)} checks failed.") if failed else None
    return Output(report, report.table(), refusal)
