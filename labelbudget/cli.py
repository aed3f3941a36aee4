"""`labelbudget` command line: compose profiles, run the experiment, inspect model sizes, transcribe audio."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the project's one line (`error: ...`, exit 2), not argparse's usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _at_least(low: int | float):
    """An argparse type: a number of `low`'s type, >= low (argparse prints the refusal in one line, exit 2)."""
    def parse(text: str) -> int | float:
        try:
            value = type(low)(text)
        except ValueError:
            kind = "an integer" if isinstance(low, int) else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not value >= low:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is out of range: at least {low}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="labelbudget",
        description="How much labeled data does an ASR need, and how much does a bigger SSL model save? "
        "Runs the sample-efficiency experiment as a DVC pipeline driven by Prefect.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prof = sub.add_parser(
        "profile",
        help="compose conf/ with a profile (smoke, default, calibration, gpu, paper) into params.yaml; omit NAME "
        "to list them",
        description="Compose conf/config.yaml with conf/profile/NAME.yaml (and --set overrides) into params.yaml, "
        "as `dvc exp run -S profile=NAME -S KEY=VALUE` does. Refuses to discard direct edits of params.yaml "
        "unless --force.",
    )
    prof.add_argument("name", nargs="?", help="profile to switch to; omit to list them")
    _add_set_option(prof)
    prof.add_argument("--force", action="store_true", help="discard direct edits of params.yaml")
    _add_run_parser(sub)
    sizes = sub.add_parser("sizes", help="parameter count and memory estimate of a profile's SSL model sizes")
    sizes.add_argument("--profile", help="a profile name (default: params.yaml as it is)")
    _add_transcribe_parser(sub)
    dash = sub.add_parser(
        "dashboard", help="build the experiment's W&B workspace (comparison panels); offline: write its definition",
        description="Build a W&B workspace for the experiment in params.yaml (project and group from `wandb`): "
        "the report run's charts of weighted WER/CER against labeled hours with the fitted curves and per test "
        "set, every finetune's test CER against its labeled hours grouped by upstream, and the pretraining curves. "
        "With W&B online (wandb.mode or WANDB_MODE) it saves the workspace; otherwise it writes W&B's JSON "
        "definition of it to --out and exits 0. Needs the `dashboard` extra (wandb-workspaces).")
    dash.add_argument("--out", type=Path, default=Path("reports/wandb_workspace.json"),
                      help="where the offline definition goes (default: reports/wandb_workspace.json)")
    dash.add_argument("--entity", help="W&B entity (default: WANDB_ENTITY, or your default entity when online)")
    dash.add_argument("--name", help="the workspace's name (default: 'labelbudget: <wandb.group>')")
    args = parser.parse_args(argv)
    commands = {"transcribe": _transcribe, "run": _run, "sizes": lambda a: _sizes(a.profile), "profile": _profile,
                "dashboard": _dashboard}
    from labelbudget.errors import LabelbudgetError, one_line

    try:
        return commands[args.command](args)
    except LabelbudgetError as e:  # bad params, an unknown profile...: one line, exit 2, nothing written
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def _profile(args: argparse.Namespace) -> int:
    from labelbudget import profiles
    from labelbudget.config import project_root

    root = project_root()
    args.overrides = _overrides(root, args)
    if not args.name and not args.overrides:
        current, sets = profiles.current(root)
        for name in profiles.available_profiles(root):
            print(("* " if name == current else "  ") + name + (f"  (--set {' '.join(sets)})"
                                                                if name == current and sets else ""))
        edits = profiles.unsaved_edits(root)
        if edits:
            print(f"params.yaml has direct edits: {', '.join(edits)}")
        return 0
    path = profiles.write_params(root, args.name, args.overrides, force=args.force)
    print(f"{path} now holds profile {profiles.current(root)[0]!r}"
          f"{' with ' + ' '.join(args.overrides) if args.overrides else ''}; `dvc repro` re-runs what it changes")
    return 0


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override on top of the profile, exactly as `dvc exp run -S`: subsets.seeds=[0,1], "
        "'~upstreams.large' (drop a key), +models.tiny={layers: 2, dim: 64} (add one). Repeatable",
    )
    parser.add_argument(
        "--sizes",
        type=lambda v: [s for s in v.split(",") if s],
        metavar="S1,S2",
        help="SSL sizes to pre-train and compare (keys of `models`), e.g. small: writes the overrides that set "
        "ssl_sizes, add or drop their upstreams, and skip the report findings that need a dropped size",
    )


def _overrides(root: Path, args: argparse.Namespace) -> list[str]:
    """--set overrides, after the ones --sizes stands for."""
    if not args.sizes:
        return args.overrides
    from labelbudget import profiles

    profile = args.name if args.command == "profile" else args.profile
    base = profiles.compose(root, profile or profiles.current(root)[0], [], check=False)
    return [*profiles.size_overrides(base, args.sizes), *args.overrides]


RUN_HELP = """\
Run the experiment's DVC pipeline through a Prefect flow: every stage starts as soon as its inputs are ready
(independent ones side by side), stages DVC reports up to date are skipped, failures retried; a failed data
validation stops everything after it. Needs no set-up: without PREFECT_API_URL, Prefect starts a temporary
local server (10-20 s). Outputs, dvc.lock and `dvc status` end up as after `dvc repro`.

examples:
  labelbudget run                                   # params.yaml as it is (the repo ships `default`)
  labelbudget run --profile smoke                   # the whole pipeline in a few minutes
  labelbudget run --set subsets.budgets_min=[2,6,20] --set subsets.seeds=[0]
  labelbudget run --sizes small                     # one SSL size (ssl_sizes, upstreams, report roles)
  labelbudget run subsets                           # only the data stages up to `subsets`
  labelbudget run --remote s3://bucket/labelbudget  # share outputs between machines (DVC remote)
"""


def _dashboard(args: argparse.Namespace) -> int:
    from labelbudget.config import load_params
    from labelbudget.dashboard import build

    print(build(load_params(), args.out, args.entity, args.name))
    return 0


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run the experiment (the DVC pipeline driven by Prefect) and print where the report is",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("targets", nargs="*", metavar="STAGE", help="run only these stages and what they need")
    run.add_argument(
        "--profile",
        help="compose conf/ with this profile into params.yaml first (smoke, default, calibration, gpu, paper); "
        "default: params.yaml as it is, or the current profile when --set is given",
    )
    _add_set_option(run)
    run.add_argument("--force", action="store_true", help="let --profile/--set discard direct edits of params.yaml")
    run.add_argument("--concurrency", type=_at_least(1), default=2, help="stages running at once (default: 2)")
    run.add_argument(
        "--task-runner",
        choices=["threads", "dask"],
        default="threads",
        help="Prefect task runner: a thread pool (default) or a local Dask cluster (prefect-dask)",
    )
    run.add_argument("--dask-address", help="run tasks on this Dask scheduler instead of a local cluster")
    run.add_argument("--retries", type=_at_least(0), default=2, help="retries of a failed stage (default: 2)")
    run.add_argument(
        "--retry-delay", type=_at_least(0.0), default=10.0, help="seconds before the first retry, then doubling (10)"
    )
    run.add_argument(
        "--remote",
        help="DVC remote to pull from before and push to after the run: a name from .dvc/config, a URL "
        "(s3://bucket/path) or a directory",
    )


def _add_transcribe_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "transcribe",
        help="apply a finished finetune to audio files or a manifest; scores them when references are given",
        description="Decode audio with one finetuned model (models/finetune/<upstream>-<budget>-<seed>): the "
        "run's upstream, rebuilt from params.yaml and checked against the one it was trained on, then its "
        "downstream model. Prints `id<TAB>hypothesis` lines (or writes JSON Lines with --out), and WER/CER "
        "when the manifest has `text`.",
        epilog="examples:\n  labelbudget transcribe models/finetune/large-60-0 clip1.flac clip2.wav\n"
        "  labelbudget transcribe models/finetune/large-60-0 --manifest my_test.jsonl --out hyps.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("model", type=Path, help="a finetune's folder (holds model.pt)")
    t.add_argument("audio", nargs="*", type=Path, help="audio files (any rate; resampled to 16 kHz)")
    t.add_argument("--manifest", type=Path, help="JSON Lines with `audio` (and `id`, `text`) per line")
    t.add_argument("--root", type=Path, help="folder the manifest's audio paths are relative to "
                   "(default: the manifest's folder)")
    t.add_argument("--out", type=Path, help="write id, audio, text, hyp per line (JSON Lines) here")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _transcribe(args: argparse.Namespace) -> int:
    from labelbudget import transcription as T
    from labelbudget.config import load_params, project_root

    try:
        params = load_params(project_root() / "params.yaml")
        rows = T.read_inputs(args.audio, args.manifest, args.root)
        rows = T.transcribe_files(args.model, rows, params, device=args.device)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        T.write(rows, args.out)
        print(f"{len(rows)} hypotheses written to {args.out}")
    else:
        for r in rows:
            print(f"{r['id']}\t{r['hyp']}")
    scores = T.score(rows)
    if scores:
        print(f"WER {scores['wer']:.3f}  CER {scores['cer']:.3f}  over {scores['utterances']} utterances "
              "with references", file=sys.stderr if not args.out else sys.stdout)
    return 0


def _sizes(profile: str | None) -> int:
    from labelbudget import profiles
    from labelbudget.config import load_params, project_root
    from labelbudget.encoder import size_report
    from labelbudget.schema import parse_params

    params = parse_params(profiles.compose(project_root(), profile)) if profile else load_params()
    random_sizes = [u.size for u in params.upstreams.values() if u.kind == "random"]
    names = [*params.ssl_sizes, *random_sizes]
    print(f"profile {params.profile}: encoder sizes (instantiated on the meta device)")
    print(f"{'size':<10}{'layers':>7}{'dim':>7}{'parameters':>16}{'AdamW state':>14}{'bf16 weights':>14}")
    for r in size_report(params.models, list(dict.fromkeys(names)), params.features.n_mels):
        print(f"{r['size']:<10}{r['layers']:>7}{r['dim']:>7}{r['parameters']:>16,}"
              f"{r['train_state_gib']:>11.2f} GiB{r['bf16_weights_gib']:>11.2f} GiB")
    return 0


def _run(args: argparse.Namespace) -> int:
    import os

    from labelbudget.config import project_root
    from labelbudget.upstreams.base import check_project, check_sources

    root = project_root()
    args.overrides = _overrides(root, args)
    if args.profile or args.overrides:  # composed and checked before the flow starts: a bad override costs nothing
        from labelbudget import profiles

        profiles.write_params(root, args.profile, args.overrides, force=args.force,
                              check=lambda p: check_sources(root, p))
    check_project(root)  # the schema and the files it names, before any stage
    # Quiet, self-contained Prefect unless the user configured it: state in the project, no telemetry, and
    # room for the first start of the temporary server (it migrates its database).
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from labelbudget.orchestrate.flows import experiment

    state = experiment(
        root=str(root),
        concurrency=args.concurrency,
        task_runner=args.task_runner,
        targets=args.targets or None,
        retries=args.retries,
        retry_delay_s=args.retry_delay,
        remote=args.remote,
        dask_address=args.dask_address,
        return_state=True,
    )
    if not state.is_completed():
        from labelbudget.orchestrate.flows import PipelineInterrupted

        exc = state.result(raise_on_failure=False)
        print(f"\nerror: {exc if isinstance(exc, BaseException) else state.message}", file=sys.stderr)
        if isinstance(exc, PipelineInterrupted):
            return 128 + (exc.signum or 2)  # as a shell reports a process stopped by that signal
        return 1
    result = state.result()
    ran = [name for name, outcome in result["stages"].items() if outcome != "up to date"]
    print(f"\n{len(result['stages'])} stages, {len(ran)} run by DVC, the rest up to date")
    if result["report"]:
        print(f"Report: {result['report']}\nMetrics: {root / 'reports' / 'metrics.json'}  (also a Prefect artifact)")
    else:
        print("No report yet (reports/results.md is written by the `report` stage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
