"""The ``lakeserve`` command line: loads the settings once and hands them to the commands.

Every command has ``--help``. Errors of lakeserve print one clear message and exit 2 for a bad
config or command line (``ConfigError``), 1 for anything else (a component that will not start or
answer); anything else is a bug, keeps its traceback and exits 1. ``jobs run`` and ``jobs schedule``
end each run with a result line and exit 3 when asked to fail on a finding (docs/airflow.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from lakeserve.errors import ConfigError, LakeserveError
from lakeserve.jobs.batch_args import add_batch_arguments
from lakeserve.jobs.outcome import JobOutcome, failure_code, failure_line, outcome_line
from lakeserve.redact import RedactingFilter, redact, redact_text
from lakeserve.settings import Settings, artifact_store_env, load_settings

Handler = Callable[[Settings, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # no credential of a location reaches a log line
        handler.addFilter(RedactingFilter())
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args.config)
        for name, value in artifact_store_env(settings).items():
            os.environ.setdefault(name, value)  # MLflow's boto3 reads the artifact store from here
        code: int = args.handler(settings, args)
        return code
    except LakeserveError as exc:
        _job_failed(args, exc)
        print(f"lakeserve: {redact_text(str(exc))}", file=sys.stderr)
        return failure_code(exc)
    except Exception as exc:  # a bug or an unwrapped third-party failure: its traceback follows
        _job_failed(args, exc)
        raise


def _job_failed(args: argparse.Namespace, exc: Exception) -> None:
    """A job's failure as its result line (the commands that are no job print none)."""
    if getattr(args, "job", None):
        print(failure_line(args.job, exc, exit_code=failure_code(exc)), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakeserve", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="settings YAML (default: $LAKESERVE_CONFIG, else ./lakeserve.yaml if present)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add(
        sub,
        "up",
        _up,
        "start the embedded stack (Kafka, MLflow UI, Redis if configured); Ctrl-C stops it",
        [(["--detach"], {"action": "store_true", "help": "start and return instead of waiting for Ctrl-C"})],
    )
    _add(sub, "down", _down, "stop the embedded stack started from this state folder")
    _add(sub, "status", _status, "show which embedded components run, with pids and addresses")
    _add(
        sub,
        "demo",
        _demo,
        "the main job end to end: stack, demo data and models, batch scoring, the service under traffic, "
        "monitor and A/B jobs, notebooks, and a report",
        [
            (["--keep-up"], {"action": "store_true", "help": "leave the stack running afterwards"}),
            (["--workers"], {"type": int, "default": 2, "help": "scoring workers (default 2)"}),
            (["--verbose"], {"action": "store_true", "help": "logs on the terminal, not in <state_dir>/logs/demo.log"}),
        ],
    )
    _add(
        sub,
        "serve",
        _serve,
        "run the scoring service: N workers in one consumer group, restarted if they die",
        [
            (["--workers"], {"type": int, "default": 1, "help": "Kafka worker processes (default 1; 0 with --http)"}),
            (["--http"], {"action": "store_true", "help": "also serve REST invocations (docs/http.md)"}),
            (["--host"], {"default": None, "help": "REST bind address (default: http.host)"}),
            (["--port"], {"type": int, "default": None, "help": "REST port (default: http.port)"}),
        ],
    )
    endpoint = sub.add_parser("endpoint", help="update or inspect the running endpoint").add_subparsers(
        title="endpoint commands", metavar="COMMAND"
    )
    _add(
        endpoint,
        "update",
        _endpoint_update,
        "validate an endpoint config (YAML) and hand it to the running workers; they swap with no downtime",
        [(["file"], {"type": Path, "help": "endpoint YAML (the endpoint itself or a settings file)"})],
    )
    _add(endpoint, "status", _endpoint_status, "what the workers last did with an update, and what they serve")
    tables = sub.add_parser("tables", help="maintain Delta tables").add_subparsers(
        title="tables commands", metavar="COMMAND"
    )
    _add(
        tables,
        "optimize",
        _tables_optimize,
        "compact, checkpoint and vacuum the inference table",
        [(["--retention-hours"], {"type": int, "default": 168, "help": "vacuum files older than this"})],
    )
    jobs = sub.add_parser("jobs", help="Spark jobs: monitoring, A/B analysis, batch scoring").add_subparsers(
        title="jobs commands", metavar="COMMAND"
    )
    run = jobs.add_parser("run", help="run one job now").add_subparsers(title="jobs", metavar="JOB")
    _add(
        run,
        "monitor",
        _job_monitor,
        "profile and drift metrics of the inference table (InferenceLog profile)",
        [
            (["--full-refresh"], {"action": "store_true", "help": "recompute every window, not only new ones"}),
            (["--fail-on-drift"], {"action": "store_true", "help": "exit 3 when this run finds drift (else 0)"}),
        ],
    ).set_defaults(job="monitor")
    _add(
        run,
        "ab",
        _job_ab,
        "A/B analysis between the served entities, with significance tests",
        [
            (["--end"], {"type": _aware_datetime, "default": None, "help": "period end, ISO 8601 with zone"}),
            (["--fail-on-worse"], {"action": "store_true", "help": "exit 3 when a treatment is significantly worse"}),
        ],
    ).set_defaults(job="ab")
    batch = _add(
        run,
        "batch-score",
        _job_batch_score,
        "score every row of a table with the endpoint's served entities, in one Delta commit",
    )
    add_batch_arguments(batch).set_defaults(job="batch-score")
    _add(
        jobs,
        "schedule",
        _job_schedule,
        "run the configured jobs on their cron expressions until Ctrl-C (or SIGTERM)",
        [(["--run-now"], {"action": "store_true", "help": "also run every configured job once at start"})],
    ).set_defaults(job="schedule")
    deploy = sub.add_parser("deploy", help="render deployment manifests from the settings").add_subparsers(
        title="deploy commands", metavar="COMMAND"
    )
    _add(
        deploy,
        "k8s",
        _deploy_k8s,
        "Kubernetes manifests (docs/deploy.md): the settings as a ConfigMap and a Secret, the Kafka workers' "
        "Deployment scaled on the consumer lag (KEDA or an HPA), the REST Deployment and Service",
        [
            (["--image"], {"required": True, "help": "container image with lakeserve installed"}),
            (["--out"], {"type": Path, "default": None, "help": "write one file per object here (default: stdout)"}),
            (["--name"], {"default": None, "help": "prefix of the objects' names (default: endpoint.name)"}),
            (["--namespace"], {"default": None, "help": "the objects' namespace (default: kubectl's)"}),
            (["--workers"], {"type": int, "default": 1, "help": "Kafka worker processes per pod (default 1)"}),
            (["--min-replicas"], {"type": int, "default": 1, "help": "worker pods at least (default 1; 0: KEDA)"}),
            (["--max-replicas"], {"type": int, "default": None,
                                  "help": "worker pods at most (default and cap: ceil(kafka.partitions / --workers))"}),
            (["--scaler"], {"choices": ["keda", "hpa"], "default": "keda", "help": "what scales the workers"}),
            (["--lag-threshold"], {"type": int, "default": None,
                                   "help": "consumer lag per pod to aim at (default: limits.max_batch_size "
                                           "* --workers)"}),
            (["--rest"], {"action": argparse.BooleanOptionalAction, "default": True,
                          "help": "render the REST Deployment and Service (default: yes)"}),
            (["--rest-replicas"], {"type": int, "default": 1, "help": "REST pods (default 1)"}),
            (["--env-from"], {"action": "append", "default": [], "metavar": "SECRET",
                              "help": "an existing Secret whose keys every pod gets as environment variables "
                                      "(e.g. AWS_ACCESS_KEY_ID); repeatable"}),
        ],
    )  # fmt: skip
    config = sub.add_parser("config", help="inspect settings").add_subparsers(
        title="config commands", metavar="COMMAND"
    )
    _add(config, "show", _config_show, "print the resolved settings tree (secrets masked)")
    return parser


def _add(
    sub: Any, name: str, handler: Handler, help_text: str, options: list[tuple[list[str], dict[str, Any]]] | None = None
) -> argparse.ArgumentParser:
    cmd: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    for flags, kwargs in options or []:
        cmd.add_argument(*flags, **kwargs)
    cmd.set_defaults(handler=handler)
    return cmd


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT (Ctrl-C) or SIGTERM. Installed explicitly: a process started in the
    background of a non-interactive shell (CI, nohup) inherits SIGINT ignored, and Python then
    raises no KeyboardInterrupt."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.pipelines.embedded.stack import Stack

    stack = Stack(settings)
    stack.up()
    _print_status(stack)
    if args.detach:
        return 0
    stop = _stop_on_signals()
    print("lakeserve: stack is up; Ctrl-C (or `lakeserve down`) stops it", flush=True)
    while not stop.wait(1.0):
        if not any(s.pid for s in stack.status()):
            print("lakeserve: every component has stopped", flush=True)
            return 0
    stopped = stack.down()
    print(f"lakeserve: stopped {', '.join(stopped) or 'nothing'}", flush=True)
    return 0


def _down(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.pipelines.embedded.stack import Stack

    stopped = Stack(settings).down()
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.pipelines.embedded.stack import Stack

    _print_status(Stack(settings))
    return 0


def _print_status(stack: Any) -> None:
    for s in stack.status():
        state = f"running (pid {s.pid})" if s.pid else "stopped"
        print(f"{s.name:<10} {state:<22} {s.address}")


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    """The steps and the report on the terminal; everything else in the state folder's demo.log."""
    from lakeserve.console import quiet, verbose
    from lakeserve.jobs.end_to_end import format_main_report, run_main_job

    log_file = settings.stack.state_dir / "logs" / "demo.log"
    with contextlib.nullcontext(verbose()) if args.verbose else quiet(log_file) as console:
        console.line(f"lakeserve demo (logs: {'the terminal' if args.verbose else log_file})")
        try:
            report = run_main_job(settings, keep_up=args.keep_up, workers=args.workers, progress=console)
        except BaseException:
            console.line(f"the main job failed; what happened is in {log_file}")
            raise
        console.line()
        console.line(format_main_report(report))
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.pipelines.http import new_metrics
    from lakeserve.pipelines.metrics_server import MetricsServer
    from lakeserve.pipelines.stop_deadline import exit_when_stop_hangs, serve_stop_timeout_s
    from lakeserve.pipelines.supervisor import Supervisor
    from lakeserve.scoring.devices import hide_gpus_unless_needed

    if args.workers < (0 if args.http else 1):
        raise ConfigError(f"--workers must be at least {0 if args.http else 1}, got {args.workers}")
    stopped = _stop_on_signals()
    # the bound a deployment's grace period is sized by (lakeserve deploy k8s): past it, exit status 1
    exit_when_stop_hangs(stopped, serve_stop_timeout_s(settings, args.workers, args.http), "lakeserve serve")
    hide_gpus_unless_needed(settings.endpoint.served_entities)  # CPU entities only: no GPU for anything here
    exporting = settings.metrics.enabled and args.workers > 0
    # one registry: the workers report into it; the metrics endpoint and the REST server both read it
    metrics = new_metrics(settings) if args.http or exporting else None
    supervisor = Supervisor(settings, args.workers, metrics=metrics) if args.workers else None
    exporter = None
    if supervisor is not None and metrics is not None and exporting:
        exporter = MetricsServer(settings.metrics, metrics, supervisor.readiness)
        exporter.start()  # before the workers: /ready answers 503 while they start
        print(f"lakeserve: worker metrics on http://{settings.metrics.host}:{settings.metrics.port}/metrics")
    rest = _start_http(settings, args, stopped, metrics) if args.http else None
    print(
        f"lakeserve: serving endpoint {settings.endpoint.name} with {args.workers} worker(s) on "
        f"{settings.kafka.requests_topic}{' and REST' if rest else ''}; Ctrl-C stops",
        flush=True,
    )
    try:
        if supervisor is not None:
            supervisor.run(stopped)
        else:
            while not stopped.wait(0.5):
                pass
    finally:
        if exporter is not None:
            exporter.stop()
    if rest is not None:
        rest.join()
    print("lakeserve: service stopped", flush=True)
    return 0


def _start_http(
    settings: Settings, args: argparse.Namespace, stopped: threading.Event, metrics: Any
) -> threading.Thread:
    """The REST server in a thread of this process; it drains and flushes once ``stopped`` is set."""
    from lakeserve.pipelines.http import listen_settings, run_http

    http = listen_settings(settings.http, args.host, args.port)  # a bad host/port fails here, not in the thread
    thread = threading.Thread(
        target=run_http, args=(settings, stopped, http.host, http.port), kwargs={"metrics": metrics}, name="http-server"
    )
    thread.start()
    scheme = "https" if http.tls else "http"
    print(
        f"lakeserve: REST on {scheme}://{http.host}:{http.port}/serving-endpoints/{settings.endpoint.name}/invocations"
    )
    return thread


def _endpoint_update(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.pipelines.updates import publish, read_endpoint_file

    endpoint = read_endpoint_file(args.file)
    if endpoint.name != settings.endpoint.name:
        raise ConfigError(f"endpoint file names {endpoint.name!r}, the service runs {settings.endpoint.name!r}")
    path = publish(endpoint, settings.stack.state_dir, settings.mlflow)
    print(f"published {path}; running workers load it in the background and swap between micro-batches")
    return 0


def _endpoint_status(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.pipelines.updates import read_status

    status = read_status(settings.stack.state_dir, settings.endpoint.name)
    print(json.dumps(status, indent=2) if status else "no update has been applied or refused yet")
    return 0


def _tables_optimize(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.monitoring.table_maintenance import optimize_table

    report = optimize_table(
        settings.inference_table_uri,
        retention_hours=args.retention_hours,
        storage_options=settings.tables.delta_storage_options(),
    )
    print(redact_text(str(report)))
    return 0


def _aware_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add one, e.g. {text}+00:00")
    return value


def _job_monitor(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.jobs.monitor import run_from_settings

    return _job_done(run_from_settings(settings, full_refresh=args.full_refresh), args.fail_on_drift)


def _job_ab(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.jobs.ab_analysis import run_from_settings

    return _job_done(run_from_settings(settings, end=args.end), args.fail_on_worse)


def _job_batch_score(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.jobs.batch_args import options_from_args
    from lakeserve.jobs.batch_score import run_from_settings

    outcome = run_from_settings(settings, args.input, args.output, options_from_args(args))
    return _job_done(outcome, fail_on_found=False)  # rows not scored: --fail-on-error fails the run


def _job_done(outcome: JobOutcome, fail_on_found: bool) -> int:
    """The summary, then the result line last (Airflow's BashOperator pushes the last line to XCom)."""
    code = outcome.exit_code(fail_on_found)
    print(outcome.summary)
    print(outcome_line(outcome, exit_code=code), flush=True)
    return code


def _job_schedule(settings: Settings, args: argparse.Namespace) -> int:
    from lakeserve.jobs.schedule import run_schedule

    run_schedule(settings, _stop_on_signals(), lambda line: print(line, flush=True), run_now=args.run_now)
    return 0


def _deploy_k8s(settings: Settings, args: argparse.Namespace) -> int:
    """The manifests on stdout (or one file each in --out); what only works on one host on stderr."""
    from lakeserve import k8s

    manifests = k8s.render(settings, k8s.k8s_options(vars(args)))
    for warning in manifests.warnings:
        print(f"lakeserve: warning: {redact_text(warning)}", file=sys.stderr)
    if args.out is None:
        sys.stdout.write(k8s.dump(manifests.objects))
    else:
        for path in k8s.write(manifests.objects, args.out):
            print(path)
    return 0


def _config_show(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(redact(settings.model_dump(mode="json")), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
