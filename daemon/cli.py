"""The command line: parse argv, read the environment, call the modules that do the work.

Nothing imports this module; it is the only place that reads argv, the environment and signals.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config import Config, ConfigError, config_path, load_config, systemd_credential

if TYPE_CHECKING:
    from daemon.ops.instance import InstanceLock
    from daemon.ops.runtime import ServiceRuntime
    from daemon.ops.signals import SignalRelay
    from daemon.supervise import Child

# 78 = EX_CONFIG: systemd shows it, and Restart= won't loop on it; 75: another instance holds the state dir
EXIT_OK, EXIT_FAILED, EXIT_IN_USE, EXIT_CONFIG = 0, 1, 75, 78
SUPERVISOR_ENV = "LIPSYNCD_SUPERVISOR_PID"  # set by `lipsyncd run` for its children
_relay: SignalRelay | None = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_FAILED
    try:
        config = load_config(config_path(args.config, os.environ), required=bool(args.config))
    except ConfigError as exc:
        return _config_error(exc)
    from daemon.ops.logging import configure_logging

    configure_logging(config.logging.format, config.logging.level, identifier=f"lipsyncd-{args.command}")
    _bind_host(config)
    if SUPERVISOR_ENV in os.environ:
        from daemon.ops.signals import die_with_parent

        die_with_parent(int(os.environ[SUPERVISOR_ENV]))
    from daemon.ops.instance import AlreadyRunning, LockUnusable
    from daemon.store import StoreError

    try:
        return int(args.handler(args, config) or EXIT_OK)
    except ConfigError as exc:  # one only this process can see (its $CREDENTIALS_DIRECTORY)
        return _config_error(exc)
    except AlreadyRunning as exc:
        print(f"lipsyncd: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except (_UserError, StoreError, LockUnusable) as exc:
        print(f"lipsyncd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if not _storage_error(exc):
            raise
        print(f"lipsyncd: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _storage_error(exc: Exception) -> bool:
    """A StorageError can only come from a command that imported the S3 module: the others (render,
    submit, status) never import it (boto3: ~0.2 s)."""
    s3 = sys.modules.get("daemon.distribute.s3")
    return s3 is not None and isinstance(exc, s3.StorageError)


class _UserError(Exception):
    pass


def _config_error(exc: ConfigError) -> int:
    problems = str(exc).splitlines()
    if len(problems) == 1:
        print(f"lipsyncd: configuration error: {exc}", file=sys.stderr)
    else:  # every problem at once: one fix-and-retry round, not one per mistake
        lines = "\n".join(f"  - {problem}" for problem in problems)
        print(f"lipsyncd: {len(problems)} configuration errors:\n{lines}", file=sys.stderr)
    return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one statement per option; split, the CLI scatters
    from daemon import __version__

    config_help = "YAML configuration (default: $LIPSYNCD_CONFIG or config/lipsyncd.yaml)"
    parser = argparse.ArgumentParser(
        prog="lipsyncd", description="Lip-synced presenter videos from a drop folder."
    )
    parser.add_argument("--version", action="version", version=f"lipsyncd {__version__}")
    parser.add_argument("--config", help=config_help)
    # --config is also taken after the command; SUPPRESS keeps one given before it
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")

    def command(name: str, handler: Callable[..., int | None], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[anywhere])
        p.set_defaults(handler=handler)
        return p

    render = command("render", _render, "watch the inbox and render jobs (the render watcher)")
    render.add_argument("--once", action="store_true", help="process what the inbox holds now, then exit")
    render.add_argument(
        "--slot",
        type=_slot,
        default=None,
        help="run render worker N (0, 1, ...) on GPU gpus[N %% len(gpus)]; slot 0 also takes manifests "
        "from the inbox. Without it: slot 0 on every GPU in render.gpus",
    )

    upload = command(
        "upload", _upload, "upload rendered videos, write links, evict local copies (the upload watcher)"
    )
    upload.add_argument("--once", action="store_true", help="upload what is due now, then exit")
    upload.add_argument("--slot", type=_slot, default=None, help="run upload worker N (0, 1, ...)")

    run = command(
        "run", _run, "start the storage and both watchers (render, upload) as supervised child processes"
    )
    run.add_argument("--once", action="store_true", help="render the inbox, upload the results, then exit")

    command("storage", _storage, "run the embedded storage (SeaweedFS) as a service of its own")

    links = command("links", _links, "print download links; --refresh re-signs links near expiry")
    links.add_argument("job", nargs="?")
    links.add_argument(
        "--refresh", action="store_true", help="re-sign links expiring within links.refresh_before"
    )

    bucket = command("bucket", _bucket, "storage bucket housekeeping")
    bucket.add_argument("what", choices=["lifecycle"])
    bucket.add_argument("--apply", action="store_true", help="apply the configured policy (default: show)")

    submit = command("submit", _submit, "write a manifest into the inbox (copying outside media in)")
    submit.add_argument("audio", type=Path)
    submit.add_argument("videos", type=Path, nargs="+")
    submit.add_argument("--name")
    submit.add_argument("--distribute", action="store_true", help="upload and write links (off by default)")
    submit.add_argument("--link-ttl", help="link lifetime, e.g. 24h (at most 7d)")
    submit.add_argument("--notify", action="append", default=[], help="a webhook name from the config")
    submit.add_argument("--model")

    api = command("api", _api, "serve the HTTP API (docs/api.md); `api token ...` manages its tokens")
    api.add_argument("--listen", type=_listen, help="ADDRESS:PORT to listen on (default: api.listen)")
    api_sub = api.add_subparsers(title="api commands", metavar="ACTION", dest="action")
    token = api_sub.add_parser("token", help="add, list or revoke API tokens", parents=[anywhere])
    token_sub = token.add_subparsers(title="token commands", metavar="ACTION", dest="token_action")
    add = token_sub.add_parser("add", help="make a token and print it (once)", parents=[anywhere])
    add.add_argument("name")
    add.add_argument("--can", required=True, help="rights: read, submit, cancel, retry, sign (or all)")
    add.set_defaults(handler=_api_token)
    token_sub.add_parser("list", help="the tokens' names and rights", parents=[anywhere]).set_defaults(
        handler=_api_token
    )
    revoke = token_sub.add_parser(
        "revoke", help="remove a token: it stops working at once", parents=[anywhere]
    )
    revoke.add_argument("name")
    revoke.set_defaults(handler=_api_token)

    status = command("status", _status, "show jobs and progress")
    status.add_argument("job", nargs="?")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="live progress bars until the jobs finish")
    status.add_argument("--full", action="store_true", help="errors in full (cut at 80 characters otherwise)")
    status.add_argument(
        "--failed", action="store_true", help="only jobs with failures, and refused manifests"
    )
    status.add_argument("--since", help="only what changed since: 2h, 30m, 1d ago, or an ISO date/time")

    hosts = command("hosts", _hosts, "show hosts and their workers: last heartbeat, what each holds")
    hosts.add_argument("--json", action="store_true", help="machine-readable output")

    cancel = command(
        "cancel",
        _cancel,
        "stop a queued, rendering or rendered job: nothing more of it is rendered or shared",
    )
    cancel.add_argument("job")
    retry = command("retry", _retry, "render a finished job's failed and cancelled videos again")
    retry.add_argument("job")
    retry.add_argument("--all", action="store_true", help="render every video of the job again")

    check = command("check-config", _check_config, "validate the configuration file (every problem at once)")
    check.add_argument(
        "--print",
        "--effective",
        dest="effective",
        action="store_true",
        help="also print the effective configuration (defaults filled in; secrets redacted)",
    )
    command(
        "doctor",
        _doctor,
        "check what this machine offers: GPUs, providers, encoders, models, storage, folders",
    )

    model = sub.add_parser(
        "model", help="import and list lip-sync models and face detectors", parents=[anywhere]
    )
    model_sub = model.add_subparsers(title="model commands", metavar="ACTION", dest="action")
    imp = model_sub.add_parser(
        "import",
        help="import a Wav2Lip checkpoint or ONNX file, a MuseTalk release folder, or an S3FD/YuNet detector",
        parents=[anywhere],
    )
    imp.set_defaults(handler=_model_import)
    imp.add_argument("path", type=Path, help="a file, or a MuseTalk folder (musetalkV15/, sd-vae/, whisper/)")
    imp.add_argument("--name", help="model name (default: from the file name)")
    # without flags: the variants render.precision: auto may pick on this machine (int8 on VNNI/AMX CPUs,
    # fp16 with a GPU provider); these force one, or skip them for a faster import
    imp.add_argument("--fp16", action="store_true", default=None, help="make a half-precision variant (GPUs)")
    imp.add_argument("--int8", action="store_true", default=None, help="make a static int8 variant (CPUs)")
    imp.add_argument("--no-variants", action="store_true", help="make no fp16/int8 variant (faster import)")
    imp.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    model_sub.add_parser(
        "list", help="models and detectors in the models directory", parents=[anywhere]
    ).set_defaults(handler=_model_list)

    store = sub.add_parser("store", help="job store (ledger) maintenance", parents=[anywhere])
    store_sub = store.add_subparsers(title="store commands", metavar="ACTION", dest="action")
    store_sub.add_parser(
        "migrate",
        help="bring the job store's schema up to this version (each process also does it as it starts)",
        parents=[anywhere],
    ).set_defaults(handler=_store_migrate)

    bench = command("bench", _bench, "measure speed and memory; print a table (see bench/README.md)")
    bench.add_argument("--quick", action="store_true", help="tiny inputs: checks the command works")
    bench.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="SECTION",
        help="example, e2e, memory, encoder, model, workers, cluster, musetalk, musetalk-e2e, "
        "musetalk-memory, paired",
    )
    bench.add_argument(
        "--against",
        metavar="COMMIT",
        help="the commit the `paired` section measures this checkout against (default: its own)",
    )
    bench.add_argument("--json", type=Path, help="also write the results here")
    bench.add_argument(
        "--repeats",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="speed runs per figure, the fastest counts (default 1; 3 on a machine that is not quiet)",
    )

    for name, text in (
        ("install-systemd", "create the user, folders and units (run as root)"),
        ("uninstall-systemd", "remove the units and the user; keep user data"),
    ):
        p = command(name, _install, text)
        p.add_argument(
            "--prefix", type=Path, default=Path("/"), help="install into this root (for packaging)"
        )
        p.add_argument("--share", type=Path, default=Path("/srv/lipsyncd"), help="the shared folder")
        p.add_argument("--user", default="lipsyncd")
        p.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
        if name == "install-systemd":
            p.add_argument(
                "--public-url",
                help="the address people open links at (storage.public_url); default: "
                "http://<this host's fully qualified name>:8333. Given, it is set in an existing config too",
            )
    return parser


# -- handlers ----------------------------------------------------------------------------------------


def _hold(config: Config, role: str) -> InstanceLock:
    """This process's one-of-a-kind lock in the state directory, or AlreadyRunning naming the holder."""
    from daemon.ops.instance import InstanceLock

    with suppress(OSError):  # a read-only state directory is reported by the lock, in plain words
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return InstanceLock.acquire(config.state_dir / "locks" / f"{role}.lock", role)


def _slot(text: str) -> int:
    """A worker's slot: a whole number from 0 (systemd passes the instance name, `%i`)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a worker number such as 0 or 1, got {text!r}")
    return int(text)


def _as_worker(kind: str, slot: int | None) -> str:
    """Every log line of this process names its worker (a journald field: WORKER=host:render@1)."""
    import structlog

    from daemon.lease import worker_name
    from daemon.ops.logging import bind_process

    name = worker_name(kind, slot or 0)
    structlog.contextvars.bind_contextvars(worker=name)
    bind_process(worker=name)  # its other threads too (intake, uploads, the lease and presence beats)
    return name


def _bind_host(config: Config) -> None:
    """Every log line of every process names its host (HOST=...): one journal for many hosts reads apart.
    service.host_name names it when several hosts share a machine's hostname (containers, tests)."""
    from daemon.lease import host_name, set_host_name
    from daemon.ops.logging import bind_process

    set_host_name(config.service.host_name)
    bind_process(host=host_name())


def _render(args: argparse.Namespace, config: Config) -> int:
    from daemon.app import RenderDaemon

    _as_worker("render", args.slot)
    with _hold(config, f"render@{args.slot or 0}"):
        daemon = RenderDaemon.build(config, _runtime(config), slot=args.slot)
        if args.once:
            daemon.run_once()
            daemon.store.close()
            return EXIT_OK
        _on_reload(args, daemon.reload)
        daemon.run_forever()
    return EXIT_OK


def _announce_reach(config: Config) -> None:
    """The first log line of every process that serves or writes links: who can open them."""
    import structlog

    from daemon.distribute.reach import reach

    where = reach(config)
    structlog.get_logger("daemon.cli").info(
        "links_reach", who=where.who, link_host=where.host, detail=where.sentence()
    )


def _upload(args: argparse.Namespace, config: Config) -> int:
    from daemon.app import UploadDaemon
    from daemon.config import with_credentials

    config = with_credentials(config, os.environ)  # webhook files in this unit's $CREDENTIALS_DIRECTORY
    _announce_reach(config)
    worker = _as_worker("upload", args.slot)
    with _hold(config, f"upload@{args.slot or 0}"):
        runtime = _runtime(config)
        daemon = UploadDaemon.build(
            config, runtime, credentials_file=_systemd_credential("s3"), worker=worker
        )
        if args.once:
            daemon.run_once()
            return EXIT_OK
        _on_reload(args, lambda new: daemon.reload(with_credentials(new, os.environ)))
        daemon.run_forever()
    return EXIT_OK


def _run(args: argparse.Namespace, config: Config) -> int:
    from daemon.supervise import run_once

    _announce_reach(config)
    with _hold(config, "run"):
        base = [sys.executable, "-m", "daemon", *(["--config", args.config] if args.config else [])]
        return run_once(base) if args.once else _supervise(base, config)


def _supervise(base: list[str], config: Config) -> int:
    from daemon.ops.instance import is_held
    from daemon.supervise import Child, Supervisor

    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    from daemon.app import render_workers

    children = [
        *_workers(base, env, "render", render_workers(config)),
        *_workers(base, env, "upload", config.upload.workers),
    ]
    if config.storage.endpoint_url is None:
        owner = config.state_dir / "embedded-s3" / "owner.lock"
        children.insert(0, Child("storage", [*base, "storage"], env, ready=lambda: is_held(owner)))
    stop, reload = threading.Event(), threading.Event()
    relay = _signals()
    for signum in (signal.SIGTERM, signal.SIGINT):
        relay.on(signum, stop.set)
    relay.on(signal.SIGHUP, reload.set)
    return Supervisor(children, stop, reload).run()


def _workers(base: list[str], env: dict[str, str], kind: str, count: int) -> list[Child]:
    """One child per worker: `kind --slot N` named kind@N; a single one is the plain command (slot 0 on
    every GPU), named kind."""
    from daemon.supervise import Child

    if count == 1:
        return [Child(kind, [*base, kind], env)]
    return [Child(f"{kind}@{n}", [*base, kind, "--slot", str(n)], env) for n in range(count)]


def _storage(args: argparse.Namespace, config: Config) -> int:
    from daemon.distribute.server import StorageDaemon

    if config.storage.endpoint_url is not None:
        nothing = (
            f"storage.endpoint_url is set ({config.storage.endpoint_url}): lipsyncd uses that storage, "
            "so there is no embedded storage to run here."
        )
        if "NOTIFY_SOCKET" not in os.environ:
            raise _UserError(nothing)
        # the lipsyncd-storage unit: started, found nothing to do, ended (READY first, so not a failure)
        runtime = _runtime(config)
        runtime.ready(lambda: nothing)
        runtime.close()
        print(f"lipsyncd: {nothing}", file=sys.stderr)
        return EXIT_OK
    _announce_reach(config)
    with _hold(config, "storage"):
        StorageDaemon.build(config, _runtime(config)).run_forever()
    return EXIT_OK


def _links(args: argparse.Namespace, config: Config) -> int:
    from daemon.distribute.refresh import print_links, refresh_links

    if args.refresh:
        refreshed = refresh_links(config, args.job, credentials_file=_systemd_credential("s3"))
        print(f"re-signed {refreshed} link(s)")
    return print_links(config, args.job)


def _bucket(args: argparse.Namespace, config: Config) -> int:
    from daemon.distribute.lifecycle import LifecyclePolicy, apply, show
    from daemon.distribute.storage import open_storage

    c = config.lifecycle
    policy = LifecyclePolicy(
        ia_after_days=c.ia_after_days or None,
        expire_after_days=c.expire_after_days or None,
        abort_multipart_after_days=c.abort_multipart_after_days,
        prefix=f"{config.storage.prefix}/" if config.storage.prefix else "",
    )
    storage = open_storage(config, role="bucket", credentials_file=_systemd_credential("s3"))
    try:
        print(
            apply(storage.client, storage.bucket, policy).summary()
            if args.apply
            else show(storage.client, storage.bucket)
        )
    finally:
        storage.close()
    return EXIT_OK


def _systemd_credential(name: str) -> Path | None:
    return systemd_credential(name, os.environ)


def _runtime(config: Config) -> ServiceRuntime:
    """Signals and the service manager: SIGTERM/SIGINT stop; NOTIFY_SOCKET is taken out of the environment
    so child processes (the embedded storage) cannot talk to systemd in our name."""
    from daemon.ops.runtime import ServiceRuntime
    from daemon.ops.systemd import Notifier, watchdog_interval

    stop = threading.Event()
    relay = _signals()
    for signum in (signal.SIGTERM, signal.SIGINT):
        relay.on(signum, stop.set)
    from daemon.ops.metrics import MetricsFile

    interval = watchdog_interval(os.environ)
    notifier = Notifier.from_environ(os.environ, unset=True)
    folder = config.service.metrics_dir
    metrics = MetricsFile(folder) if folder else None  # one file: a view of the ledger's counters
    return ServiceRuntime(
        notifier, stop, watchdog_interval=interval, stall_after=config.service.stall_after, metrics=metrics
    )


def _on_reload(args: argparse.Namespace, apply: Callable[[Config], None]) -> None:
    """SIGHUP re-reads the configuration file; a bad one is refused with a log line and the old one kept."""
    import structlog

    log = structlog.get_logger("daemon.cli")
    wanted = threading.Event()

    def reload_loop() -> None:
        while True:
            wanted.wait()
            wanted.clear()
            try:
                apply(load_config(config_path(args.config, os.environ), required=True))
            except ConfigError as exc:
                log.error(
                    "config_reload_refused", error=str(exc), keeping="the configuration already running"
                )

    _signals().on(signal.SIGHUP, wanted.set)
    threading.Thread(target=reload_loop, name="config-reload", daemon=True).start()


def _submit(args: argparse.Namespace, config: Config) -> int:
    from daemon.render.modelspec import available_models
    from daemon.submit import Checks, Submission, SubmitError, submit

    request = Submission(
        audio=args.audio,
        videos=tuple(args.videos),
        name=args.name,
        distribute=args.distribute,
        link_ttl=args.link_ttl,
        notify=tuple(args.notify),
        model=args.model,
    )
    try:
        checks = Checks(tuple(config.webhooks), tuple(available_models(config.models_dir)))
        path = submit(request, inbox=config.inbox_dir, shared=config.shared, checks=checks)
    except SubmitError as exc:
        raise _UserError(str(exc)) from exc
    print(path)
    return EXIT_OK


def _listen(text: str) -> str:
    from daemon.config import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _api(args: argparse.Namespace, config: Config) -> int:
    from daemon.api.server import serve

    if getattr(args, "action", None) == "token":
        raise _UserError("lipsyncd api token: give add, list or revoke")
    with _hold(config, "api"):  # one per state dir: its start-up settles the Idempotency-Keys in flight
        serve(config, args.listen or config.api.listen)
    return EXIT_OK


def _api_token(args: argparse.Namespace, config: Config) -> int:
    from daemon.api.tokens import TokenError, add_token, parse_rights, read_tokens, revoke_token, tokens_path

    path = tokens_path(config.api.tokens_file, config.state_dir, os.environ)
    try:
        action = args.token_action
        if action == "add":
            token = add_token(path, args.name, parse_rights(args.can))
            print(token)
            print(f"lipsyncd: token {args.name!r} added to {path}; it is shown only now", file=sys.stderr)
        elif action == "revoke":
            revoke_token(path, args.name)
            print(f"token {args.name!r} revoked")
        else:
            tokens = read_tokens(path)
            for t in tokens:
                print(f"{t.name:24} {','.join(sorted(t.rights))}")
            if not tokens:
                print(f"no API tokens in {path}; add one with `lipsyncd api token add NAME --can read`")
    except TokenError as exc:
        raise _UserError(str(exc)) from exc
    return EXIT_OK


def _status(args: argparse.Namespace, config: Config) -> int:
    from daemon.status import (
        Filter,
        job_documents,
        parse_since,
        print_json,
        print_table,
        refused_documents,
        select,
        watch,
    )
    from daemon.store import JobStore

    try:
        only = Filter(args.job, args.failed, parse_since(args.since) if args.since else None)
    except ValueError as exc:
        raise _UserError(str(exc)) from exc
    store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)

    def read() -> list[dict[str, Any]]:
        refused = [] if args.job else refused_documents(config.inbox_dir / "failed")
        return select(job_documents(store, args.job) + refused, only)

    try:
        if args.job and store.job(args.job) is None:
            raise _UserError(f"no job named {args.job!r}")
        documents = read()
        if args.watch:
            watch(read)
        else:
            if not args.json:  # first: the links stay last, ready to copy
                from daemon.hosts import read_views, summary

                print(f"{summary(read_views(store, config))}\n")
            print_json(documents) if args.json else print_table(documents, full=args.full)
    finally:
        store.close()
    return EXIT_OK


def _hosts(args: argparse.Namespace, config: Config) -> int:
    from daemon.hosts import print_json, print_table, read_views
    from daemon.store import JobStore

    store = JobStore(config.state_dir, timeout=config.store.busy_timeout)
    try:
        views = read_views(store, config)
    finally:
        store.close()
    print_json(views) if args.json else print_table(views)
    return EXIT_OK


def _cancel(args: argparse.Namespace, config: Config) -> int:
    from daemon.control import cancel

    return _control(config, lambda store, inbox: cancel(store, inbox, args.job).line("cancelled"))


def _retry(args: argparse.Namespace, config: Config) -> int:
    from daemon.control import retry

    def run(store: Any, inbox: Any) -> str:
        return retry(store, inbox, args.job, every_video=args.all).line("queued again")

    return _control(config, run)


def _control(config: Config, change: Callable[[Any, Any], str]) -> int:
    from daemon.control import ControlError
    from daemon.inbox import Inbox
    from daemon.store import JobStore

    store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
    try:
        print(change(store, Inbox(config.inbox_dir, settle_time=config.inbox.settle_time)))
    except ControlError as exc:
        raise _UserError(str(exc)) from exc
    finally:
        store.close()
    return EXIT_OK


def _model_import(args: argparse.Namespace, config: Config) -> int:
    from daemon.modelimport import ModelImportError, import_model

    try:
        report = import_model(
            args.path,
            config.models_dir,
            name=args.name,
            fp16=False if args.no_variants else args.fp16,
            int8=False if args.no_variants else args.int8,
            overwrite=args.overwrite,
        )
    except ModelImportError as exc:
        raise _UserError(str(exc)) from exc
    print("\n".join(report.lines()))
    return EXIT_OK


def _store_migrate(args: argparse.Namespace, config: Config) -> int:
    from daemon.store import SCHEMA_VERSION, JobStore

    store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
    store.close()
    where = "on PostgreSQL (store.url)" if config.store.url else f"in {store.path}"
    if store.schema_found == SCHEMA_VERSION:
        print(f"the job store {where} is at schema version {SCHEMA_VERSION}, this lipsyncd's: nothing to do")
    else:
        print(f"the job store {where} went from schema version {store.schema_found} to {SCHEMA_VERSION}")
    return EXIT_OK


def _model_list(args: argparse.Namespace, config: Config) -> int:
    from daemon.modelimport import list_detectors
    from daemon.render.registry import model_entries

    default = config.render.model
    for entry in model_entries(config.models_dir):
        mark = "  (default)" if entry.name == default else ""
        origin = "weightless placeholder" if not entry.variants else f"from {entry.source or '?'}"
        print(f"{entry.name:24} {entry.family:10} {entry.variants_text:16} {origin}{mark}")
    for detector in list_detectors(config.models_dir):
        print(f"{'detector ' + detector.kind:24} {'detector':10} {'-':16} from {detector.source or '?'}")
    return EXIT_OK


def _doctor(args: argparse.Namespace, config: Config) -> int:
    from daemon.doctor import run_checks

    checks = run_checks(config)
    for check in checks:
        print(f"{check.mark:4} {check.what:22} {check.detail}")
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED


def _check_config(args: argparse.Namespace, config: Config) -> int:
    where = config.source or "built-in defaults (no configuration file found)"
    print(f"configuration OK: {where}")
    if args.effective:
        import yaml

        from daemon.config import effective

        print(yaml.safe_dump(effective(config), sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _bench(args: argparse.Namespace, config: Config) -> int:
    from daemon.bench import BenchOptions, format_table, run_bench, write_json

    try:
        options = BenchOptions(
            quick=args.quick, only=tuple(args.only), repeats=args.repeats, against=args.against
        )
        results = run_bench(options)
    except ValueError as exc:
        raise _UserError(str(exc)) from exc
    print(format_table(results))
    if args.json:
        write_json(results, args.json)
    return EXIT_OK


def _install(args: argparse.Namespace, config: Config) -> int:
    from daemon.ops.install import install_systemd, uninstall_systemd

    options = {"user": args.user, "group": args.user, "share": args.share, "dry_run": args.dry_run}
    if args.command == "install-systemd":
        from daemon.config import parse_base_url

        try:
            public_url = None if args.public_url is None else parse_base_url(args.public_url)
        except ValueError as exc:
            raise _UserError(f"--public-url: {exc}") from exc
        binary = Path(sys.prefix) / "bin" / "lipsyncd"
        lines = install_systemd(args.prefix, exec_start=binary, public_url=public_url, **options)
    else:
        lines = uninstall_systemd(args.prefix, **options)
    print("\n".join(lines))
    return EXIT_OK


def _signals() -> SignalRelay:
    """Signals reach callbacks through one relay thread per process (see daemon/ops/signals.py)."""
    global _relay
    if _relay is None:
        from daemon.ops.signals import SignalRelay

        _relay = SignalRelay.install()
    return _relay
