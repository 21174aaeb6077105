"""The `trainwise` command line: one thin command per step, plus `run`, `status` and `server`.

Commands parse options, load the config and call one function; logic lives in the modules they
call. Errors meant for the user (TrainwiseError) print as one message without a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from trainwise.config import ProjectConfig, load_config
from trainwise.errors import Terminated, TrainwiseError
from trainwise.server import DEFAULT_HOST, DEFAULT_PORT, LocalServer
from trainwise.signals import sigterm_raises
from trainwise.steps import STEP_NAMES, STEPS, StepSpec
from trainwise.steps.artifacts import REPORT

if TYPE_CHECKING:
    from trainwise.tracking import Tracker

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_PROJECT = "projects/digits"
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)  # URLs must stay whole to be clickable and copyable

# -- shared options, defined once ------------------------------------------------------------------

project_option = click.option(
    "--project", "-p", default=DEFAULT_PROJECT, show_default=True, envvar="TRAINWISE_PROJECT", metavar="DIR",
    help="Project folder holding project.yaml (or the file itself). Env: TRAINWISE_PROJECT.",
)  # fmt: skip
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config value, e.g. --set train.epochs=3. Repeatable; one value may hold several "
    "space-separated assignments. Values are YAML (3, true, null, [1, 2]).",
)  # fmt: skip
force_option = click.option(
    "--force", is_flag=False, flag_value="all", default="false", show_default=True, metavar="[STEP]",
    help="Rerun even when a finished run with the same inputs exists. With `run`: a step name reruns from that step.",
)  # fmt: skip
dry_run_option = click.option(
    "--dry-run", type=click.BOOL, is_flag=False, flag_value=True, default=False, show_default=True,
    help="Tiny settings (small sample, 1 epoch, 2 trials) so the step finishes in seconds; runs are tagged.",
)  # fmt: skip


skip_checks_option = click.option(
    "--skip-checks", type=click.BOOL, is_flag=False, flag_value=True, default=False, show_default=True,
    help="Train even though the pipeline checks did not pass (recorded as a tag on the run).",
)  # fmt: skip
resume_option = click.option(
    "--resume", type=click.BOOL, is_flag=False, flag_value=True, default=False, show_default=True,
    help="Continue the newest interrupted run of this step from its last checkpoint (same MLflow run).",
)  # fmt: skip

rollback_option = click.option(
    "--rollback", type=click.BOOL, is_flag=False, flag_value=True, default=False, show_default=True,
    help="Point `champion` back at `previous-champion` (undo the last promotion).",
)  # fmt: skip
model_option = click.option(
    "--model", "model_uri", default="", metavar="URI",
    help="Predict with this model (models:/name/3, models:/m-..., runs:/id/model) instead of models:/<name>@champion.",
)  # fmt: skip
storage_option = click.option(
    "--storage", default="", envvar="TRAINWISE_OPTUNA_STORAGE", metavar="URL",
    help="Optuna storage (postgresql://..., sqlite:///..., a .log journal file); default SQLite under .trainwise/. "
    "Env: TRAINWISE_OPTUNA_STORAGE.",
)  # fmt: skip

with_upstream_option = click.option(
    "--with-upstream", is_flag=True, default=False,
    help="First run the upstream steps this one needs that have no current run (as `trainwise run --to STEP`).",
)  # fmt: skip

# Options only some steps take, beyond the shared ones; skip_checks and resume are the runner's own,
# the rest reach the step as StepContext.options.
STEP_OPTIONS: dict[str, tuple[Callable[[F], F], ...]] = {
    "train": (skip_checks_option, resume_option),
    "tune": (storage_option,),
    "promote": (rollback_option,),
    "submit": (model_option,),
}


def step_options(function: F) -> F:
    for option in reversed((project_option, set_option, force_option, dry_run_option)):
        function = option(function)
    return function


# -- the group -------------------------------------------------------------------------------------


class TrainwiseGroup(click.Group):
    """Turns the errors we raise on purpose into a message and an exit code, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainwiseError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/] (Ctrl-C): the run was marked KILLED")
            ctx.exit(130)
        except Terminated:
            console.print("[yellow]terminated[/] (SIGTERM): the run was marked KILLED")
            ctx.exit(143)


@click.group(cls=TrainwiseGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="trainwise")
def cli(verbose: int, quiet: bool) -> None:
    """trainwise: from raw data to a registered model and a submission, every step tracked on MLflow.

    \b
    Steps: understand -> ingest -> explore -> sample -> prepare -> check -> train -> tune -> promote -> submit
    Start: trainwise run --project projects/digits
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=verbose > 1, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:  # logs and CI: one plain line per record, nothing wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Our INFO is for the user; third-party INFO (alembic migrations, urllib3) is noise unless -vv.
    for noisy in ("alembic", "urllib3", "mlflow", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def _load(project: str, overrides: tuple[str, ...], dry_run: bool) -> ProjectConfig:
    return load_config(project, overrides, dry_run=dry_run)


def _tracker(cfg: ProjectConfig) -> Tracker:
    from trainwise.api import connect  # lazily: mlflow takes seconds to import, --help should not

    return connect(cfg)


# -- one command per step --------------------------------------------------------------------------


def _make_step_command(spec: StepSpec) -> click.Command:
    def command(project: str, overrides: tuple[str, ...], force: str, dry_run: bool, **extra: Any) -> None:
        from trainwise import api
        from trainwise.steps.pipeline import forced_steps

        cfg = _load(project, overrides, dry_run)
        with sigterm_raises():
            resume = bool(extra.pop("resume", False))
            skip_checks = bool(extra.pop("skip_checks", False))
            with_upstream = bool(extra.pop("with_upstream", False))
            forced = spec.name in forced_steps(force)
            loaded = api.Project(cfg, _tracker(cfg))
            if with_upstream and (pending := api.upstream_to_run(loaded, spec.name, skip_checks=skip_checks, **extra)):
                out.print(f"{spec.name} needs {', '.join(pending)} first (no current run for this config)", highlight=False)
            outcome = api.run_step(
                loaded, spec.name, force=forced, with_upstream=with_upstream, skip_checks=skip_checks, resume=resume, **extra
            )
        verb = "reused cached run" if outcome.state == "reused" else "finished"
        out.print(f"[bold green]{spec.name}[/] {verb}: {outcome.url}", highlight=False)

    command.__doc__ = f"Step {spec.number}: {spec.title}."
    decorated = step_options(command)
    for option in STEP_OPTIONS.get(spec.name, ()):
        decorated = option(decorated)
    if spec.upstream:
        decorated = with_upstream_option(decorated)
    return click.command(name=spec.name)(decorated)


for _spec in STEPS:
    cli.add_command(_make_step_command(_spec))


@cli.command(name="run")
@step_options
@skip_checks_option
@click.option("--to", "last", type=click.Choice(STEP_NAMES), help="Stop after this step, running only the steps it needs.")
@click.option("--from", "first", type=click.Choice(STEP_NAMES), help="Start at this step (the earlier ones must have current runs).")
def run_command(
    *, project: str, overrides: tuple[str, ...], force: str, dry_run: bool, skip_checks: bool, last: str | None, first: str | None
) -> None:
    """Every step (or --from/--to a range) as child runs of one pipeline run; unchanged steps are reused from cache."""
    from trainwise import api
    from trainwise.paths import trainwise_home
    from trainwise.steps.pipeline import selected_steps

    selected_steps(first, last)  # a range with no step in it is refused before anything starts
    cfg = _load(project, overrides, dry_run)
    tracker = _tracker(cfg)
    with sigterm_raises():
        pipeline_url, outcomes = api.run_pipeline(api.Project(cfg, tracker), first=first, last=last, force=force, skip_checks=skip_checks)
    table = Table(title=f"pipeline {cfg.name}", title_justify="left")
    table.add_column("step")
    table.add_column("state")
    table.add_column("run", overflow="fold")  # whole URLs: they are for clicking and copying
    for outcome in outcomes:
        style = {"ran": "green", "reused": "cyan"}[outcome.state]
        table.add_row(outcome.step, f"[{style}]{outcome.state}[/]", outcome.url or "")
    out.print(table)
    out.print(f"MLflow UI:    {tracker.experiment_url}  (experiment {cfg.name})", highlight=False)
    out.print(f"pipeline run: {pipeline_url}", highlight=False)
    if _has_report(tracker, pipeline_url):
        out.print(f"findings:     {REPORT} in the pipeline run's artifacts (every step's findings, and what to try next)", highlight=False)
    submitted = next((o for o in outcomes if o.step == "submit"), None)
    if submitted is not None and submitted.outputs.get("file"):
        score = submitted.outputs.get("score")
        out.print(f"submission:   {submitted.outputs['file']}" + (f"  (score {score:.4f})" if score is not None else ""), highlight=False)
    elif submitted is not None and submitted.state == "reused":  # the file is the cached run's artifact
        out.print(f"submission:   submission.csv of the reused submit run {submitted.url}", highlight=False)
    out.print(f"outputs:      run artifacts in the MLflow UI; local state in {trainwise_home()}", highlight=False)


@cli.command(name="status")
@project_option
@set_option
@dry_run_option
def status_command(project: str, overrides: tuple[str, ...], dry_run: bool) -> None:
    """Which steps have a finished run for the current config, their runs, and what to run next."""
    from trainwise.steps.pipeline import project_status

    cfg = _load(project, overrides, dry_run)
    statuses, next_command = project_status(cfg, _tracker(cfg))
    table = Table(title=f"{cfg.name} ({cfg.project_ref})", title_justify="left")
    for column in ("#", "step", "state", "cache key"):
        table.add_column(column)
    table.add_column("why", overflow="fold")
    table.add_column("run", overflow="fold")
    styles = {"fresh": "green", "stale": "yellow", "failed": "red", "running": "blue"}
    for s in statuses:
        style = styles.get(s.state, "dim")
        table.add_row(s.number, s.step, f"[{style}]{s.state}[/]", s.cache_key or "", s.why, s.url or "")
    out.print(table)
    out.print(f"next: {next_command}" if next_command else "every step is up to date", highlight=False)


@cli.command(name="dashboard")
@project_option
@set_option
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback: only this machine).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard_command(project: str, overrides: tuple[str, ...], storage: str, host: str, port: int) -> None:
    """optuna-dashboard on the project's study storage (the one `trainwise tune` uses); needs the dashboard extra."""
    from trainwise.dashboard import page_url, serve
    from trainwise.steps.tune import make_storage, redact, study_storage

    cfg = _load(project, overrides, False)
    url = study_storage(cfg, storage or None)
    out.print(f"optuna-dashboard on {redact(url)}: {page_url(host, port)}  (Ctrl-C stops it)", highlight=False)
    serve(url, host=host, port=port, open_storage=lambda u: make_storage(u, cfg))  # until Ctrl-C or SIGTERM: the way to stop it
    out.print("dashboard stopped")


# -- the local tracking server ---------------------------------------------------------------------


@cli.group()
@click.option("--home", type=click.Path(path_type=Path), envvar="TRAINWISE_HOME", help="State folder (default ./.trainwise). Env: TRAINWISE_HOME.")
@click.pass_context
def server(ctx: click.Context, home: Path | None) -> None:
    """The local MLflow tracking server (SQLite backend, proxied artifacts, loopback only)."""
    ctx.obj = {"home": home}


@server.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Interface to bind; keep loopback unless you add auth.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, envvar="TRAINWISE_PORT", type=int, help="Env: TRAINWISE_PORT.")
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn workers; >1 measured slower on small machines.")
@click.option("--enable-job-execution", is_flag=True, help="MLflow's job runner (costs about 2 GB of RAM).")
@click.option("--auth", is_flag=True, help="MLflow's basic-auth app: users, passwords, per-experiment permissions.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without --auth (a network that is yours alone).")
@click.option("--allowed-hosts", default=None, metavar="LIST", help="Host headers the server accepts, e.g. 'myhost,myhost:5000'.")
@click.pass_obj
def start(
    obj: dict[str, Any], *, host: str, port: int, workers: int, enable_job_execution: bool, auth: bool, insecure: bool,
    allowed_hosts: str | None,
) -> None:
    """Start the server, or report the one already running."""
    srv = LocalServer(
        obj["home"], host=host, port=port, workers=workers, enable_job_execution=enable_job_execution,
        auth=auth, insecure=insecure, allowed_hosts=allowed_hosts,
    )  # fmt: skip
    status = srv.start()
    out.print(f"MLflow tracking server running at {status.url} (pid {status.pid}; log {status.log_file})", highlight=False)
    if auth and (credentials := srv.admin_credentials()):
        out.print(
            f"basic auth on. Admin user {credentials[0]!r}; its password is in {srv.credentials_file} (readable only by you).\n"
            f"Clients pass credentials through the environment:\n"
            f"  export MLFLOW_TRACKING_URI={status.url} MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>\n"
            "Give others their own users (read-only by default) with MLflow's auth API: "
            "mlflow.server.get_app_client('basic-auth', tracking_uri=...).create_user(...)",
            highlight=False,
        )


@server.command()
@click.pass_obj
def stop(obj: dict[str, Any]) -> None:
    """Stop the server and every process it started."""
    stopped = LocalServer(obj["home"]).stop()
    out.print("stopped" if stopped else "no trainwise server was running")


@server.command(name="status")
@click.pass_obj
def server_status(obj: dict[str, Any]) -> None:
    """Whether the server runs, where, and whether /health answers (exit 1 when not running)."""
    status = LocalServer(obj["home"]).status()
    if not status.running:
        out.print(f"not running ({status.detail})", highlight=False)
        sys.exit(1)
    out.print(f"running at {status.url} (pid {status.pid}, {status.detail}; log {status.log_file})", highlight=False)


@server.command(name="ui-url")
@click.pass_obj
def ui_url(obj: dict[str, Any]) -> None:
    """Print the MLflow UI address."""
    out.print(LocalServer(obj["home"]).ui_url(), highlight=False)


def main() -> None:
    cli(prog_name="trainwise")


def _has_report(tracker: Tracker, pipeline_url: str) -> bool:
    """Whether the pipeline run (named by its UI link, or runs:/<id> on a non-HTTP store) logged report.html."""
    run_id = pipeline_url.removeprefix("runs:/").split("/runs/")[-1].split("?")[0].strip("/")
    try:
        return REPORT in tracker.list_artifacts(run_id)
    except Exception:  # noqa: BLE001 - only decides whether one line is printed
        return False
