"""Command line: serve, route explain, status, trial report, quarantine, replay, demo. Argument parsing only; no logic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sidecar import commands
from sidecar.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sidecar",
        description="DICOM AI sidecar: receives series by C-STORE, runs clinical models, returns "
        "DICOM SR and images. Bundled demo weights are NOT FOR CLINICAL USE.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, default=Path("conf"),
                        help="folder holding sidecar.yaml, routes.yaml and models.yaml (default: conf)")

    sp = sub.add_parser("serve", help="run the service until interrupted")
    with_config(sp)

    rp = sub.add_parser("route", help="routing tools")
    rsub = rp.add_subparsers(dest="route_command", required=True)
    ex = rsub.add_parser("explain", help="which route each file matches, rule by rule and cue by cue")
    with_config(ex)
    ex.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")

    st = sub.add_parser("status", help="journal summary: series, jobs, outbox, dead letters")
    with_config(st)

    qu = sub.add_parser("quarantine", help="list quarantined jobs (given up after repeated failures), or release some")
    with_config(qu)
    qu.add_argument("--release", type=int, nargs="+", default=[], metavar="JOB_ID",
                    help="queue these quarantined (or failed) jobs again, attempts from zero")

    tr = sub.add_parser("trial", help="silent trial tools")
    trsub = tr.add_subparsers(dest="trial_command", required=True)
    trr = trsub.add_parser("report", help="per model of the live: false routes: volume, would-be alert rate, "
                                          "out-of-domain rate, latency percentiles, cases to review")
    with_config(trr)
    trr.add_argument("--all", action="store_true", help="report every route, not only those in trial")
    trr.add_argument("--since-s", type=float, default=None, help="only jobs created in the last this many seconds")

    rep = sub.add_parser("replay", help="re-run a stored series; the new results supersede the old")
    with_config(rep)
    rep.add_argument("series_uid", help="Series Instance UID of a series in the journal")
    rep.add_argument("--run", action="store_true",
                     help="run the jobs in this process instead of leaving them to a running sidecar")

    dm = sub.add_parser("demo", help="a sidecar and a PACS stand-in on loopback; push phantoms; show results")
    dm.add_argument("--keep", type=Path, default=None, help="keep the demo's files in this folder")
    dm.add_argument("--verbose", action="store_true", help="print each SR's whole content tree")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return commands.serve(args.config)
        if args.command == "route":
            return commands.route_explain(args.config, args.paths)
        if args.command == "status":
            return commands.status(args.config)
        if args.command == "trial":
            return commands.trial_report(args.config, all_routes=args.all, since_s=args.since_s)
        if args.command == "quarantine":
            return commands.quarantine(args.config, args.release)
        if args.command == "replay":
            return commands.replay(args.config, args.series_uid, run=args.run)
        if args.command == "demo":
            return commands.demo(args.keep, verbose=args.verbose)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
