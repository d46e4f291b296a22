"""The `healthsync` command line (design.md, "Command line": a public contract).

Each command parses its flags, loads the settings and hands over to the module
that does the work; this file holds no business logic. Output rules: `--json`
prints exactly one JSON object on stdout, whatever happened (an error too), and
logs go to stderr. Exit codes (one table for every command, connectors/errors.py):
0 ok; 1 record errors or an internal error; 2 configuration or credentials (wrong
token, missing scope, missing field, bad path, missing driver), nothing sent;
3 stopped (unreachable, quota, retries exhausted), state kept. A user mistake gets
a message naming the key, file or record, never a stack trace; an unexpected
exception prints one line naming a log file that holds its traceback.
Every command that uses the state store says where it is (JSON key `state`, or a
`state:` line on stderr).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from healthsync.config.settings import ConfigError, Settings, load_settings
from healthsync.sync.logs import configure_logging, register_settings_secrets, scrub

EXIT_OK, EXIT_RECORD_ERRORS, EXIT_CONFIG, EXIT_STOPPED = 0, 1, 2, 3
SANDBOX_ENV = "HEALTHSYNC_SANDBOX"

app = typer.Typer(
    name="healthsync",
    help="Customer health scores, forecast adjustment and playbooks, written back into Salesforce and HubSpot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate, show and describe the configuration.", no_args_is_help=True)
crm_app = typer.Typer(help="Prepare and check the CRMs (healthsync fields and properties).", no_args_is_help=True)
sandbox_app = typer.Typer(help="The loopback emulators of Salesforce, HubSpot and Slack.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(crm_app, name="crm")
app.add_typer(sandbox_app, name="sandbox")
state_app = typer.Typer(help="The state store: what healthsync remembers between runs.", no_args_is_help=True)
app.add_typer(state_app, name="state")

err_console = Console(stderr=True)

ConfigOpt = typer.Option(
    None, "--config", "-c",
    help="Config file (YAML), merged over the defaults; repeat to stack files (later ones override earlier).",
)
SandboxOpt = typer.Option(
    None, "--sandbox", help=f"Ready file of a running `healthsync sandbox serve` (or env {SANDBOX_ENV})."
)
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")


def _print_version(value: bool) -> None:
    if not value:
        return
    from healthsync.sync.version import installed_version

    sys.stdout.write(f"healthsync {installed_version('(not installed)')}\n")
    raise typer.Exit(0)


@app.callback()
def _options(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."
    ),
) -> None:
    """Customer health scores, forecast adjustment and playbooks, written back into Salesforce and HubSpot."""


# ----------------------------------------------------------------------------- helpers


class Exit(Exception):
    def __init__(self, code: int, message: str | None = None):
        self.code = code
        self.message = message


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(scrub(message))}", highlight=False, soft_wrap=True)
    raise Exit(code, message)


class _Output:
    """What the current command printed: `--json` must print exactly one object, even on failure."""

    emitted = False
    state: str | None = None  # where the command's state store is, once known


def _say_state(shown: str | None, as_json: bool) -> None:
    """Tell where the state store is: a `state:` line on stderr (the JSON object carries it as `state`)."""
    _Output.state = shown
    if shown and not as_json:
        err_console.print(f"[dim]state: {escape(scrub(shown))}[/]", highlight=False, soft_wrap=True)


def _settings(config: Optional[List[Path]], overlays: list[Path] | None = None) -> Settings:
    try:
        settings = load_settings(list(config or []), overlays=overlays or [])
    except ConfigError as e:
        _fail(str(e), EXIT_CONFIG)
    register_settings_secrets(settings)
    return settings


def _ready(sandbox: Optional[Path]) -> dict | None:
    path = sandbox or (Path(os.environ[SANDBOX_ENV]) if os.environ.get(SANDBOX_ENV) else None)
    if path is None:
        return None
    try:
        ready = json.loads(Path(path).read_text())
    except OSError as e:
        _fail(f"--sandbox {path}: cannot read the ready file ({e.strerror})", EXIT_CONFIG)
    except json.JSONDecodeError:
        _fail(f"--sandbox {path}: not a ready file written by `healthsync sandbox serve` (invalid JSON)", EXIT_CONFIG)
    missing = [k for k in ("salesforce", "hubspot", "slack", "inspect_url") if k not in ready]
    if missing:
        _fail(f"--sandbox {path}: ready file lacks {', '.join(missing)}", EXIT_CONFIG)
    return ready


def _emit(data: Any, as_json: bool, text: Callable[[], None] | None = None) -> None:
    if isinstance(data, dict) and _Output.state and "state" not in data:
        data = {**data, "state": _Output.state}
    if as_json:
        sys.stdout.write(scrub(json.dumps(data, default=str)) + "\n")
        sys.stdout.flush()
        _Output.emitted = True
    elif text is not None:
        text()
    else:
        Console().print_json(scrub(json.dumps(data, default=str)))


def crash_log_dir() -> Path:
    """Where tracebacks of unexpected errors go (`$HEALTHSYNC_LOG_DIR`, else the per-user state dir's `logs/`)."""
    if os.environ.get("HEALTHSYNC_LOG_DIR"):
        return Path(os.environ["HEALTHSYNC_LOG_DIR"])
    from healthsync.config.state_location import user_state_dir

    return user_state_dir() / "logs"


def _write_crash_log(exc: BaseException) -> Path | None:
    """The traceback (secrets scrubbed) in a log file of its own; None when no file can be written."""
    import tempfile

    text = scrub(
        f"healthsync {' '.join(sys.argv[1:])}\n{datetime.now().astimezone().isoformat()}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    name = f"healthsync-crash-{datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}.log"
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def _guard(fn: Callable[[], int | None], as_json: bool = False, command: str | None = None) -> None:
    """Run a command body, mapping every failure to its exit code and one clean line (connectors/errors.py).

    With `--json`, a failure still prints its one JSON object: `status`, `exit_code`,
    `errors`, `error_kind`, `stopped_reason` (when stopped), `state`, `log_file`.
    """
    from healthsync.connectors.errors import EXIT_INTERNAL, classify

    _Output.emitted, _Output.state = False, None
    message: str | None = None
    kind = None
    log_file: Path | None = None
    try:
        code = fn() or EXIT_OK
    except Exit as e:
        code, message = e.code, e.message
        kind = "configuration" if code == EXIT_CONFIG else None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        code, message, kind = 130, "interrupted", "interrupted"
    except OSError as e:  # a path the user gave that cannot be read or written: a configuration problem
        if e.filename is None:
            code, message, kind, log_file = _internal(e)
        else:
            message = f"{e.filename}: {e.strerror or e} (check the path and its permissions)"
            err_console.print(f"[bold red]error:[/] {escape(scrub(message))}", highlight=False, soft_wrap=True)
            code, kind = EXIT_CONFIG, "configuration"
    except Exception as e:  # noqa: BLE001 - every failure gets its exit code, none a traceback
        what = classify(e)
        if what.exit_code == EXIT_INTERNAL and what.kind == "internal":
            code, message, kind, log_file = _internal(e)
        else:
            code, kind, message = what.exit_code, what.kind, str(e)
            label = {"stopped": "stopped", "failed": "configuration error"}.get(what.status, "error")
            if kind == "credentials":
                label = "credentials error"
            err_console.print(f"[bold red]{label}:[/] {escape(scrub(message))}", highlight=False, soft_wrap=True)
    if as_json and not _Output.emitted and code != EXIT_OK:
        status = "stopped" if code == EXIT_STOPPED else "failed"
        _emit(
            {
                "command": command,
                "status": status,
                "exit_code": code,
                "error_kind": kind,
                "errors": [message] if message else [],
                "stopped_reason": message if status == "stopped" else None,
                "state": _Output.state,
                "log_file": str(log_file) if log_file else None,
            },
            True,
        )
    raise typer.Exit(code)


def _internal(exc: BaseException) -> tuple[int, str, str, Path | None]:
    """An unexpected exception: its traceback goes to a log file, one line to the terminal (exit 1)."""
    from healthsync.connectors.errors import EXIT_INTERNAL

    log_file = _write_crash_log(exc)
    where = f"the traceback is in {log_file}" if log_file else "no log file could be written"
    first = (scrub(str(exc)).strip().splitlines() or [""])[0][:300]
    message = f"internal error: {type(exc).__name__}: {first} ({where}; please report it)"
    err_console.print(f"[bold red]{escape(message)}[/]", highlight=False, soft_wrap=True)
    return EXIT_INTERNAL, message, "internal", log_file


def _not_built(what: str) -> int:
    err_console.print(f"[yellow]{what} is not built yet in this version of healthsync.[/]")
    return EXIT_CONFIG


# ----------------------------------------------------------------------------- run & stages


@app.command()
def run(
    config: Optional[List[Path]] = ConfigOpt,
    sandbox: Optional[Path] = SandboxOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan and print the CRM diff; send nothing."),
    as_json: bool = JsonOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Full cycle: pull -> score -> forecast -> write-back -> playbooks -> escalate -> record.

    With no CRM credentials configured, runs against the embedded sandbox (demo data).
    """
    configure_logging(verbose)

    def body():
        settings = _settings(config)
        ready = _ready(sandbox)
        from healthsync.sync.connections import state_location
        from healthsync.sync.run import run_cycle

        _Output.state = state_location(settings, ready).shown  # the summary prints it too
        summary = run_cycle(settings, ready=ready, dry_run=dry_run, json_mode=as_json)
        if as_json:
            _emit(summary.to_json(), True)
        return summary.exit_code

    _guard(body, as_json, "run")


def _stage(name: str, config, sandbox, as_json, **kwargs):
    configure_logging(False)

    def body():
        settings = _settings(config)
        ready = _ready(sandbox)
        import healthsync.sync.run as run_module
        from healthsync.sync.connections import state_location

        fn = getattr(run_module, f"{name}_stage", None)
        if fn is None:
            return _not_built(f"`healthsync {name}`")
        _Output.state = state_location(settings, ready).shown  # the result carries it as `state`
        result = fn(settings, ready=ready, **kwargs)
        _emit(result, as_json)
        return int(result.get("exit_code", EXIT_OK)) if isinstance(result, dict) else EXIT_OK

    _guard(body, as_json, name)


@app.command()
def pull(config: Optional[List[Path]] = ConfigOpt, sandbox: Optional[Path] = SandboxOpt, as_json: bool = JsonOpt):
    """Pull changed records from each CRM into the local replica; reports records per CRM and object."""
    _stage("pull", config, sandbox, as_json)


@app.command()
def score(
    config: Optional[List[Path]] = ConfigOpt,
    sandbox: Optional[Path] = SandboxOpt,
    input: Optional[Path] = typer.Option(None, "--input", help="Offline: a directory of canonical CSV/Parquet files."),
    output: Optional[Path] = typer.Option(None, "--output", help="Offline: the scored file (.csv or .parquet)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Score as of this date (YYYY-MM-DD)."),
    as_json: bool = JsonOpt,
):
    """Score the replica, or (with --input/--output) canonical files offline."""
    if input is None and output is None:
        _stage("score", config, sandbox, as_json)
        return
    configure_logging(False)

    def body():
        if input is None or output is None:
            _fail("--input and --output go together", EXIT_CONFIG)
        settings = _settings(config)
        _writable(output, "--output")
        from healthsync.sync.offline import score_files

        result = score_files(input, output, settings, as_of=as_of)
        _emit(result, as_json, lambda: _print_offline(result))
        return result.get("exit_code", EXIT_OK)

    _guard(body, as_json, "score")


def _print_offline(result: dict) -> None:
    c = Console()
    c.print(f"scored [bold]{result['accounts_scored']}[/] accounts -> {result['output']}")
    for band, n in result.get("bands", {}).items():
        c.print(f"  {band}: {n}")
    from rich.markup import escape  # problem lines quote values from the user's files

    for p in result.get("problems", [])[:20]:
        err_console.print(f"[yellow]skipped/ignored:[/] {escape(p)}", highlight=False)
    more = len(result.get("problems", [])) - 20
    if more > 0:
        err_console.print(f"[yellow]... and {more} more record problems[/]")
    for w in result.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


@app.command()
def sync(
    config: Optional[List[Path]] = ConfigOpt,
    sandbox: Optional[Path] = SandboxOpt,
    dry_run: bool = typer.Option(False, "--dry-run"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Only retry the queue of failed records."),
    as_json: bool = JsonOpt,
):
    """Write the latest scores back to the CRMs (diffed against what was last confirmed)."""
    _stage("sync", config, sandbox, as_json, dry_run=dry_run, retry_failed=retry_failed)


@app.command()
def escalate(config: Optional[List[Path]] = ConfigOpt, sandbox: Optional[Path] = SandboxOpt, as_json: bool = JsonOpt):
    """Check SLA clocks of open playbook tasks and escalate in Slack (deduplicated ladder)."""
    _stage("escalate", config, sandbox, as_json)


@app.command()
def status(config: Optional[List[Path]] = ConfigOpt, as_json: bool = JsonOpt):
    """Recent runs (a run whose process is gone shows as `abandoned`), failures and queue sizes."""
    configure_logging(False)

    def body():
        settings = _settings(config)
        from healthsync.sync.connections import state_location
        from healthsync.sync.state import open_store
        from healthsync.sync.status import status as status_of

        _say_state(state_location(settings).shown, as_json)
        result = status_of(open_store(settings.state.url))

        def table() -> None:
            from healthsync.sync.status_view import render_status

            render_status(json.loads(scrub(json.dumps(result, default=str))))  # no secret in any message shown

        _emit(result, as_json, table)
        return EXIT_OK

    _guard(body, as_json, "status")


# ----------------------------------------------------------------------------- validation & report


@app.command()
def backtest(
    history: Path = typer.Option(..., "--history", help="Directory with accounts_history.csv[, tickets.csv, opportunities_history.csv]."),
    config: Optional[List[Path]] = ConfigOpt,
    challenger: Optional[Path] = typer.Option(None, "--challenger", help="A second config to compare."),
    as_json: bool = JsonOpt,
):
    """Validate the model (and the forecast adjustment) against history."""
    configure_logging(False)

    def body():
        settings = _settings(config)
        challenger_settings = _settings(challenger) if challenger else None
        from healthsync.sync.validation_job import run_backtest

        report, text = run_backtest(settings, history, challenger_settings)
        _emit(report, as_json, lambda: Console().print(text, highlight=False, soft_wrap=True))
        return EXIT_RECORD_ERRORS if report.get("record_problem_count") else EXIT_OK

    _guard(body, as_json, "backtest")


@app.command()
def calibrate(
    history: Path = typer.Option(..., "--history"),
    out: Path = typer.Option(..., "--out", help="Where to write the config overlay (YAML)."),
    method: str = typer.Option(
        "logistic", "--method",
        help="logistic (class-weighted regression on metric scores; default) | correlation (each metric's correlation with retention) "
             "| fitted (regularised regression on the metrics' raw values)"),
    target_recall: float = typer.Option(0.75, "--target-recall"),
    max_at_risk_share: float = typer.Option(
        0.35, "--max-at-risk-share", help="At most this share of account-snapshots in the at-risk bands."),
    split: str = typer.Option(
        "auto", "--split", help="auto (time with two or more as_of, else random) | time | random"),
    holdout: float = typer.Option(0.25, "--holdout", help="Share held out: of the snapshots (time) or accounts (random)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    config: Optional[List[Path]] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Learn weights, thresholds, the churn-probability map and the forecast map from outcomes; writes a config overlay."""
    configure_logging(False)

    def body():
        if method not in ("correlation", "logistic", "fitted"):
            _fail(f"--method: {method!r} is not one of correlation, logistic, fitted", EXIT_CONFIG)
        if split not in ("auto", "time", "random"):
            _fail(f"--split: {split!r} is not one of auto, time, random", EXIT_CONFIG)
        for flag, value, low_open in (("--holdout", holdout, True), ("--max-at-risk-share", max_at_risk_share, False),
                                      ("--target-recall", target_recall, False)):
            upper_ok = value < 1 if low_open else value <= 1
            if not (0 < value and upper_ok):
                _fail(f"{flag}: {value:g} must be between 0 and 1", EXIT_CONFIG)
        settings = _settings(config)
        _writable(out, "--out")
        from healthsync.sync.validation_job import run_calibrate

        report, text = run_calibrate(settings, history, out, method=method, target_recall=target_recall,
                                     max_at_risk_share=max_at_risk_share, split=split, holdout=holdout, seed=seed,
                                     configs=list(config or []))
        _emit(report, as_json, lambda: Console().print(text, highlight=False, soft_wrap=True))
        return EXIT_RECORD_ERRORS if report.get("record_problem_count") else EXIT_OK

    _guard(body, as_json, "calibrate")


@app.command()
def report(
    out: Path = typer.Option(..., "--out", help="The HTML file to write."),
    owner: Optional[str] = typer.Option(None, "--owner", help="Only this CSM's book of business (e-mail or name)."),
    account: Optional[str] = typer.Option(
        None, "--account", help="One account (id, CRM id or name): its page in the report, or with --customer the page to share."),
    customer: bool = typer.Option(
        False, "--customer", help="With --account: the customer-facing QBR page (adoption, usage, support; nothing internal)."),
    config: Optional[List[Path]] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Portfolio report (filters, every account, CRM links, trends, forecast) or a customer's QBR page; one self-contained HTML file."""
    configure_logging(False)

    def body():
        if customer and not account:
            _fail("--customer needs --account ID (the account whose page to write)", EXIT_CONFIG)
        if customer and owner:
            _fail("--customer writes one account's page: give --account, not --owner", EXIT_CONFIG)
        settings = _settings(config)
        from healthsync.sync.connections import state_location
        from healthsync.sync.report import NoMatchError, write_customer_report, write_report
        from healthsync.sync.state import open_store

        _say_state(state_location(settings).shown, as_json)
        _writable(out, "--out")
        store = open_store(settings.state.url)
        try:
            if customer:
                info = write_customer_report(store, settings, out, account)
            else:
                info = write_report(store, settings, out, owner=owner, account=account)
        except NoMatchError as e:
            _fail(str(e), EXIT_CONFIG)
        data = {"path": str(info.path), "size_bytes": info.size_bytes, "accounts": info.accounts, "charts": info.charts}
        _emit(data, as_json, lambda: Console().print(f"report written: {out}", highlight=False))
        return EXIT_OK

    _guard(body, as_json, "report")


def _writable(path: Path, option: str) -> None:
    """Exit 2 naming the option before any work when `path` cannot be written (a folder, no such folder, read-only)."""
    target = Path(path)
    if target.is_dir():
        _fail(f"{option} {target}: is a folder; give a file name", EXIT_CONFIG)
    folder = target.parent if str(target.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        _fail(f"{option} {target}: {folder} is a file, not a folder", EXIT_CONFIG)
    if not folder.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"{option} {target}: cannot create its folder {folder} ({e.strerror or e})", EXIT_CONFIG)
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        _fail(f"{option} {target}: not writable (check the path and its permissions)", EXIT_CONFIG)


@app.command()
def schedule(config: Optional[List[Path]] = ConfigOpt, sandbox: Optional[Path] = SandboxOpt):
    """Run the jobs of `schedules:` (APScheduler, UTC) until stopped."""
    configure_logging(False)

    def body():
        settings = _settings(config)
        ready = _ready(sandbox)
        from healthsync.sync.connections import state_location
        from healthsync.sync.scheduler import serve

        _say_state(state_location(settings, ready).shown, False)
        return serve(settings, ready=ready)

    _guard(body, False, "schedule")


# ----------------------------------------------------------------------------- config


@config_app.command("validate")
def config_validate(
    files: Optional[List[Path]] = typer.Argument(
        None, help="Config files, stacked in order (later override earlier); default: the packaged defaults."),
):
    """Print every problem of a config file, or of a stack of them (base + overlays); exit 2 on any."""

    def body():
        from healthsync.config.checks import deep_problems

        label = " + ".join(str(f) for f in files) if files else "defaults"
        try:
            settings = load_settings(list(files or []))
            problems = deep_problems(settings)
        except ConfigError as e:
            problems = e.problems
        if problems:
            err_console.print(f"[bold red]invalid:[/] {escape(label)}", highlight=False, soft_wrap=True)
            for p in problems:
                err_console.print(f"  - {escape(scrub(p))}", highlight=False, soft_wrap=True)
            return EXIT_CONFIG
        Console().print(f"[green]valid:[/] {label}", highlight=False, soft_wrap=True)
        return EXIT_OK

    _guard(body, False, "config validate")


@config_app.command("show")
def config_show(config: Optional[List[Path]] = ConfigOpt):
    """The effective configuration (defaults, file, environment), secrets redacted."""

    def body():
        settings = _settings(config)
        sys.stdout.write(scrub(json.dumps(settings.redacted(), indent=2, default=str)) + "\n")
        return EXIT_OK

    _guard(body, False, "config show")


@config_app.command("schema")
def config_schema():
    """The JSON Schema of the configuration."""
    from healthsync.config.settings import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


# ----------------------------------------------------------------------------- state


@state_app.command("migrate")
def state_migrate(
    to: str = typer.Option(
        ..., "--to",
        help="SQLAlchemy URL of the new, empty state database, e.g. postgresql+psycopg://healthsync@db/healthsync "
             "(give the password in PGPASSWORD rather than on the command line).",
    ),
    config: Optional[List[Path]] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Copy every table of the current state store (state.url) into a new database, so nothing is sent again."""
    configure_logging(False)

    def body():
        settings = _settings(config)
        from healthsync.sync.state_copy import copy_state

        result = copy_state(settings.state.url, to)

        def text() -> None:
            out = Console(highlight=False, soft_wrap=True)
            out.print(f"copied {result.total:,} rows from {result.source} to {result.target} "
                      f"(schema revision {result.revision}):")
            for table, n in result.rows.items():
                if n:
                    out.print(f"  {table}: {n:,}")
            out.print("next: point state.url at the new database (in the config file, or HEALTHSYNC__STATE__URL); "
                      "the old one is left as it was")

        _emit(result.to_json(), as_json, text)
        return EXIT_OK

    _guard(body)


# ----------------------------------------------------------------------------- crm


def _crm_connectors(config: Optional[List[Path]], sandbox: Optional[Path]) -> dict:
    """The configured CRM connectors, or those of a running sandbox; a clear error when there are none."""
    from healthsync.sync.connections import open_crm_connectors

    settings = _settings(config)
    ready = _ready(sandbox)
    if ready is None and not settings.live:
        _fail("no CRM credentials configured and no --sandbox given (see README, Configuration)", EXIT_CONFIG)
    return open_crm_connectors(settings, ready)


@crm_app.command("setup")
def crm_setup(config: Optional[List[Path]] = ConfigOpt, sandbox: Optional[Path] = SandboxOpt, as_json: bool = JsonOpt):
    """Create the healthsync fields (Salesforce) and properties (HubSpot); safe to run again."""
    configure_logging(False)

    def body():
        result = {name: {"created": c.setup()} for name, c in _crm_connectors(config, sandbox).items()}
        _emit(result, as_json)
        return EXIT_OK

    _guard(body, as_json, "crm setup")


@crm_app.command("check")
def crm_check(config: Optional[List[Path]] = ConfigOpt, sandbox: Optional[Path] = SandboxOpt, as_json: bool = JsonOpt):
    """Check credentials, permissions and the healthsync fields; names whatever is missing."""
    configure_logging(False)

    def body():
        result, ok = {}, True
        for name, c in _crm_connectors(config, sandbox).items():
            r = c.check()
            ok &= r.ok
            result[name] = {"ok": r.ok, "problems": r.problems}
        if not as_json:
            for name, r in result.items():
                mark = "[green]ok[/]" if r["ok"] else "[red]problems[/]"
                Console().print(f"{name}: {mark}")
                for p in r["problems"]:
                    Console().print(f"  - {escape(p)}", highlight=False)
        else:
            _emit(result, True)
        return EXIT_OK if ok else EXIT_CONFIG

    _guard(body, as_json, "crm check")


# ----------------------------------------------------------------------------- sandbox & demo data


@sandbox_app.command("serve")
def sandbox_serve(
    accounts: int = typer.Option(500, "--accounts", min=1),
    seed: int = typer.Option(7, "--seed"),
    hubspot_tier: str = typer.Option("professional", "--hubspot-tier", help="starter | professional"),
    faults: Optional[str] = typer.Option(None, "--faults", help="e.g. salesforce.error_rate=0.1,slack.drop_rate=0.05"),
    ready_file: Optional[Path] = typer.Option(None, "--ready-file", help="Where to write the ready file (JSON)."),
    same_stamp: int = typer.Option(
        0, "--same-stamp", min=0, help="Give N records of each HubSpot object one modification time (as imports do)."
    ),
    search_lag: float = typer.Option(
        2.0, "--search-lag", min=0, help="HubSpot search index lag in seconds (each write waits up to this long)."
    ),
    warehouse: bool = typer.Option(True, "--warehouse/--no-warehouse",
                                   help="Also write the demo usage to a DuckDB warehouse (named in the ready file)."),
):
    """Run the emulators on 127.0.0.1 until SIGTERM/SIGINT; writes the ready file when ready."""
    configure_logging(False)

    def body():
        if hubspot_tier not in ("starter", "professional"):
            _fail(f"--hubspot-tier: {hubspot_tier!r} is not one of starter, professional", EXIT_CONFIG)
        from healthsync.connectors.sandbox.serve import serve

        return serve(accounts=accounts, seed=seed, hubspot_tier=hubspot_tier, faults_spec=faults, ready_file=ready_file,
                     same_stamp=same_stamp, search_lag_seconds=search_lag, warehouse=warehouse)

    _guard(body, False, "sandbox serve")


@sandbox_app.command("reset")
def sandbox_reset(config: Optional[List[Path]] = ConfigOpt, as_json: bool = JsonOpt):
    """Start the embedded demo over: remove its saved sandbox world and clear the state (`make demo-reset`)."""
    configure_logging(False)

    def body():
        settings = _settings(config)
        from healthsync.sync.demo_world import reset_demo

        result = reset_demo(settings.state.url)
        _emit(result, as_json, lambda: Console(highlight=False).print(
            f"demo reset: {result['runs_forgotten']} runs forgotten in {result['state']}"
            + (f", sandbox world {result['world_removed']} removed" if result["world_removed"] else "")
            + "; the next `healthsync run` without credentials starts a new demo"))
        return EXIT_OK

    _guard(body)


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(..., "--out", help="Directory to write canonical files into."),
    accounts: int = typer.Option(1000, "--accounts", min=1),
    seed: int = typer.Option(0, "--seed"),
    history: bool = typer.Option(False, "--history", help="Write the validation history format instead."),
    fmt: str = typer.Option("csv", "--format", help="csv | parquet"),
):
    """Generate the deterministic demo portfolio (or its history) as canonical files."""

    def body():
        if fmt not in ("csv", "parquet"):
            _fail(f"--format: {fmt!r} is not one of csv, parquet", EXIT_CONFIG)
        from healthsync.connectors import demo_data as dd

        out.mkdir(parents=True, exist_ok=True)
        if history:
            dd.write_history(dd.generate_history(accounts, seed=seed), out, fmt=fmt)
        else:
            dd.write_portfolio(dd.generate_portfolio(accounts, seed=seed), out, fmt=fmt)
        Console().print(f"wrote {'history' if history else 'portfolio'} of {accounts} accounts to {out}")
        return EXIT_OK

    _guard(body, False, "demo-data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
