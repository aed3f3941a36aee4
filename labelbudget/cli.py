"""`labelbudget` command line: switch profiles, run the experiment, inspect model sizes."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="labelbudget",
        description="How much labeled data does an ASR need, and how much does a bigger SSL model save? "
        "Runs the sample-efficiency experiment as a DVC pipeline driven by Prefect.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prof = sub.add_parser("profile", help="copy profiles/<name>.yaml onto params.yaml (smoke, default, gpu, paper)")
    prof.add_argument("name", nargs="?", help="profile to switch to; omit to list them")
    args = parser.parse_args(argv)

    if args.command == "profile":
        from labelbudget.config import available_profiles, load_params, use_profile

        if not args.name:
            current = load_params().get("profile", "?")
            for name in available_profiles():
                print(("* " if name == current else "  ") + name)
            return 0
        try:
            path = use_profile(args.name)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{path} now holds profile {args.name!r}; `dvc repro` re-runs what it changes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
