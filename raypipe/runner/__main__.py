"""The runner's entry point: one pipeline run (or the resume of one) as its own driver
process, as the closed loop launches its retraining runs::

    python -m raypipe.runner run FILE [--run-id ID] [--db URL] [--address ADDR] [--set KEY=VALUE ...]
    python -m raypipe.runner resume RUN_ID [--db URL] [--address ADDR]

It prints one line per stage event and the run's end; exit 0 when the run succeeded, 1 when
it failed, 2 on a configuration error, 143 when SIGTERM stopped it (recorded ``stopped``).

The run acts as the caller's principal (:mod:`raypipe.identity`), or with ``--on-behalf-of
USER`` as that user of the platform config: the closed loop's retraining runs act for whoever
armed the loop.  That option trusts its caller, as the metadata store it writes does (see
docs/security.md): it is for processes inside the platform's trust boundary."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from raypipe.config import read_config
from raypipe.exceptions import RaypipeError, RunStopped
from raypipe.runner.driver import resume_run, start_run, stop_on_sigterm
from raypipe.runner.events import RunResult, StageEvent
from raypipe.runner.plan import build_plan
from raypipe.runner.ray_session import use_token_auth

log = logging.getLogger("raypipe.runner")


def _print_event(ev: StageEvent) -> None:
    took = f" in {ev.duration_s:.1f} s" if ev.duration_s is not None else ""
    note = f": {ev.message}" if ev.message else ""
    log.info("%s %s (attempt %d)%s%s", ev.stage, ev.status, ev.attempt, took, note)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m raypipe.runner", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline file")
    run.add_argument("file", metavar="FILE")
    run.add_argument("--run-id", metavar="ID")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    resume = sub.add_parser("resume", help="resume a recorded run")
    resume.add_argument("run_id", metavar="RUN_ID")
    for q in (run, resume):
        q.add_argument("--db", metavar="URL")
        q.add_argument("--address", metavar="ADDR")
        q.add_argument("--on-behalf-of", metavar="USER", dest="on_behalf_of")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    use_token_auth()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    try:
        with stop_on_sigterm():
            result: RunResult
            if args.command == "run":
                cfg, source = read_config(args.file, args.overrides)
                plan = build_plan(cfg, source)
                result = start_run(
                    plan,
                    config_path=str(Path(args.file).resolve()),
                    address=args.address,
                    on_event=_print_event,
                    on_start=lambda run_id, _: log.info("run %s started", run_id),
                    run_id=args.run_id,
                    db=args.db,
                    on_behalf_of=args.on_behalf_of,
                )
            else:
                result = resume_run(
                    args.run_id,
                    db=args.db,
                    address=args.address,
                    on_event=_print_event,
                    on_behalf_of=args.on_behalf_of,
                )
    except RunStopped as e:
        log.info("stopped: %s", e)
        return 143
    except RaypipeError as e:
        log.error("error: %s", e)
        return 2
    for stage, error in result.errors.items():
        log.error("stage %s failed: %s", stage, error)
    log.info("run %s %s in %.1f s", result.run_id, result.status, result.wall_s)
    return 0 if result.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
