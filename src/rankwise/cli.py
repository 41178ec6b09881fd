"""The ``rankwise`` command: run | eval | report | list | export | data check.

    rankwise run CONFIG [--set train.lr=1e-4 ...] [--threads N] [--resume RUN_DIR] [--overwrite] [--quiet]
    torchrun --nproc_per_node N -m rankwise.cli run CONFIG ...     (one process per device)
    rankwise eval RUN_DIR [--tasks NAME ...] [--set method.delta=0.1 ...]
    rankwise report RUN_DIR [RUN_DIR ...] [--out DIR]
    rankwise list
    rankwise config show PRESET_OR_FILE [--set KEY=VALUE ...] | --method NAME
    rankwise export RUN_DIR --to peft|merged|rankwise [--task N] [--out DIR] [--push-to-hub REPO]
    rankwise data check --scenario NAME --root DIR

Errors that rankwise raises on purpose (`rankwise.errors.RankwiseError`) print one line, no
traceback, and exit with status 2 (under torchrun only rank 0 prints them).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from rankwise.errors import RankwiseError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankwise", description=__doc__.split("\n")[0])
    from rankwise._version import __version__

    parser.add_argument("--version", action="version", version=f"rankwise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a continual-learning experiment")
    run.add_argument("config", help="run config YAML, or a preset name from `rankwise list` (configs/)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)",
    )
    run.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads per process (same as --set threads=N; default: torch's)",
    )
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the stopped run in RUN_DIR")
    run.add_argument("--overwrite", action="store_true", help="replace a run in the output dir (moved aside)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or per-row messages")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the estimated peak memory per GPU (causal-lm; docs/scale.md) and exit: nothing is loaded or written",
    )

    ev = sub.add_parser("eval", help="evaluate a saved run's final checkpoint on chosen tasks")
    ev.add_argument("run_dir")
    ev.add_argument("--tasks", nargs="+", help="task names (default: all)")
    ev.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="MoRAM inference option: method.top_k, method.tau or method.delta (repeatable)",
    )
    ev.add_argument("--quiet", action="store_true")

    rep = sub.add_parser("report", help="plots and a markdown summary of one or more runs")
    rep.add_argument("run_dirs", nargs="+")
    rep.add_argument("--out", help="output directory (default: RUN_DIR/report for one run, else ./report)")

    sub.add_parser("list", help="methods, scenarios, backbones and config presets")

    cfg = sub.add_parser("config", help="inspect run configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", help="every key of a config: type, value, default and help text")
    show.add_argument("config", nargs="?", help="run config YAML, or a preset name from `rankwise list`")
    show.add_argument("--method", help="instead: one adapter method's keys and defaults (e.g. codyra)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value first (repeatable)")  # fmt: skip

    exp = sub.add_parser("export", help="write a run's model as a peft, merged or rankwise folder")
    exp.add_argument("run_dir")
    exp.add_argument("--to", required=True, choices=("peft", "merged", "rankwise"),
                     help="peft LoRA folder | merged base model (save_pretrained) | rankwise adapter folder")
    exp.add_argument("--task", type=int, metavar="N", help="the model after task N (default: the last finished)")
    exp.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/export/<to>_task<N>)")
    exp.add_argument("--base-model", metavar="NAME", help="peft base_model_name_or_path (default: the run's model)")
    exp.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder to Hub repo REPO (online)")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")

    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="check that a scenario's data folder is complete")
    check.add_argument("--scenario", required=True)
    check.add_argument("--root", required=True)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from rankwise.config import load_config
    from rankwise.engine.continual import run_experiment

    overrides = list(args.overrides)
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    from rankwise.config_presets import resolve_config

    config = load_config(resolve_config(args.config), overrides)
    if args.dry_run:
        from rankwise.engine.memory_plan import plan_config, render

        plans, assumptions = plan_config(config)
        print("\n".join(f"- {line}" for line in assumptions))
        print(render(plans))
        notes = sorted({n for p in plans for n in p.notes})
        print("\n".join(f"note: {n}" for n in notes) + ("\n" if notes else ""), end="")
        return 0
    finished = False
    try:
        result = run_experiment(
            config,
            run_dir=args.resume,
            resume=args.resume is not None,
            overwrite=args.overwrite,
            quiet=args.quiet,
        )
        finished = True
    finally:
        _leave_process_group(together=finished)
    if not _is_main_rank():  # torchrun: rank 0 reports
        return 0
    if result.already_finished:  # exit 0: resuming a finished run is done, not an error
        print(
            f"rankwise run: {result.run_dir} is already finished; nothing to resume "
            f"(results in {Path(result.run_dir) / 'metrics.json'})",
            file=sys.stderr,
        )
        return 0
    m = result.metrics
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    if not args.quiet:
        print(format_matrix(result.accuracy_matrix, result.task_names))
        from rankwise.report import write_report

        write_report([Path(result.run_dir)], Path(result.run_dir) / "report")
        print(f"report: {Path(result.run_dir) / 'report' / 'report.md'}")
    print(f"run dir: {result.run_dir}")
    print(
        f"Transfer {fmt(m['transfer'])}  Average {fmt(m['average'])}  Last {fmt(m['last'])}  "
        f"BWT {fmt(m['bwt'])}"
    )
    return 0


def format_matrix(matrix, task_names: list[str]) -> str:
    """The accuracy matrix as a plain-text table: a zero-shot row, then one row after each task."""
    labels = ["zero-shot"] + [f"after {name}" for name in task_names[: len(matrix) - 1]]
    width = max(len(label) for label in labels)
    cols = [max(len(name), 6) for name in task_names]
    lines = [" " * width + "  " + "  ".join(f"{n:>{c}}" for n, c in zip(task_names, cols))]
    for label, row in zip(labels, matrix):
        lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>{c}.1f}" for v, c in zip(row, cols)))
    return "\n".join(lines)


def _is_main_rank() -> bool:
    """Whether this process reports: rank 0 of a torchrun launch, or the only process.

    A malformed launcher environment counts as the reporting rank, so its error is printed.
    """
    from rankwise.engine.distributed import detect

    try:
        return detect().is_main
    except RankwiseError:
        return True


def _leave_process_group(together: bool = False) -> None:
    """Under torchrun: leave the process group the engine joined (clean exit, no warnings). With
    `together` (the run finished on this rank, so on every rank) the ranks first meet at a barrier:
    a rank that tore down its gloo connections while rank 0 still wrote the run's last files was
    seen to abort in its teardown ("terminate called without an active exception") under load."""
    import torch.distributed as dist

    global _LEFT_GROUP
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
        _LEFT_GROUP = True


#: set when this process left a process group the engine joined: `main` then ends the process with
#: ``os._exit`` after flushing its output (see `main`)
_LEFT_GROUP = False


def _or(words: list[str]) -> str:
    """``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def inference_options(overrides: list[str]) -> dict[str, Any]:
    """``["method.delta=0", ...]`` -> ``{"delta": 0.0, ...}`` (numbers read as numbers, also ``5e-3``)."""
    from rankwise.adapters.methods import get_method, method_names
    from rankwise.config import apply_override
    from rankwise.errors import ConfigError

    by_method = {m: get_method(m).config.inference_options for m in method_names()}
    allowed = {k for keys in by_method.values() for k in keys}
    options: dict[str, Any] = {}
    for override in overrides:
        data: dict[str, Any] = {}
        apply_override(data, override)
        method = data.get("method")
        if set(data) != {"method"} or not isinstance(method, dict) or not set(method) <= allowed:
            listed = "; ".join(f"{_or(['method.' + k for k in keys])} ({m} inference)"
                               for m, keys in by_method.items() if keys)  # fmt: skip
            raise ConfigError("--set", override, listed or "nothing: no method has inference options")
        for key, value in method.items():
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
            options[key] = value
    return options


def _cmd_eval(args: argparse.Namespace) -> int:
    from rankwise.engine.continual import evaluate_run

    options = inference_options(args.overrides)
    scores = evaluate_run(args.run_dir, args.tasks, quiet=args.quiet, inference_options=options)
    if not _is_main_rank():  # torchrun: rank 0 reports
        return 0
    width = max(len(n) for n in scores)
    for name, score in scores.items():
        print(f"{name:<{width}}  {score:7.2f}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from rankwise.report import check_out_dir, write_report

    if args.out:
        check_out_dir(Path(args.out), "--out")

    out = (
        Path(args.out)
        if args.out
        else (Path(args.run_dirs[0]) / "report" if len(args.run_dirs) == 1 else Path("report"))
    )
    for path in write_report([Path(d) for d in args.run_dirs], out):
        print(path)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from rankwise.adapters.methods import get_method, method_names
    from rankwise.adapters.presets import TARGET_PRESETS
    from rankwise.config import RUN_KINDS
    from rankwise.registry import BACKBONES, SCENARIOS

    print("methods:   " + ", ".join(RUN_KINDS + method_names()))
    for name in method_names():  # the method table (adapters/methods.py)
        print(f"  {name:<18} {get_method(name).summary}")
    for title, table in (("scenarios", SCENARIOS), ("backbones", BACKBONES)):
        print(f"{title}:")
        for name, entry in table.items():
            print(f"  {name:<18} {entry.summary}")
    print("target presets: " + ", ".join(sorted(TARGET_PRESETS)))
    configs = _configs_dir()
    if configs is not None:
        print(f"config presets ({configs}):")
        paths = sorted(configs.glob("*.yaml"))
        width = max((len(p.name) for p in paths), default=0)
        for path in paths:
            print(f"  {path.name:<{width}}  {preset_description(path)}".rstrip())
    return 0


def preset_description(path: Path) -> str:
    """The first sentence of a preset YAML's leading comment block, without the ``#``."""
    words: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                stripped = line.strip()
                if not stripped.startswith("#"):
                    break
                words.append(stripped.lstrip("#").strip())
    except (OSError, UnicodeDecodeError):
        return ""
    text = " ".join(w for w in words if w)
    match = re.search(r"[.!?](\s|$)", text)
    return (text[: match.start() + 1] if match else text).rstrip(":").strip()


def _configs_dir() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / "configs").is_dir():
            return base / "configs"
    from rankwise.config_presets import preset_dirs

    shipped = preset_dirs()  # an installed wheel: the presets it carries as package data
    return shipped[0] if shipped else None


def _cmd_export(args: argparse.Namespace) -> int:
    from rankwise.engine.export_run import export_run

    folder = export_run(
        args.run_dir, args.to, out=args.out, task=args.task, base_model=args.base_model,
        push_to_hub=args.push_to_hub, overwrite=args.overwrite,
    )  # fmt: skip
    print(folder)
    if args.push_to_hub:
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from rankwise.config import load_config
    from rankwise.config_presets import resolve_config
    from rankwise.config_show import describe, describe_method, format_keys
    from rankwise.errors import ConfigError

    if (args.config is None) == (args.method is None):
        raise ConfigError("config show", args.config or args.method, "a config (file or preset) or --method NAME")
    if args.method is not None:
        keys = describe_method(args.method)
    else:
        keys = describe(load_config(resolve_config(args.config), args.overrides))
    print(format_keys(keys))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from rankwise.scenarios.data_check import check

    result = check(args.scenario, args.root)
    if result is not None:
        print(result)
    return 0


COMMANDS = {"run": _cmd_run, "eval": _cmd_eval, "report": _cmd_report, "list": _cmd_list, "data": _cmd_data, "config": _cmd_config,
            "export": _cmd_export}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The ``rankwise`` command; returns its exit status.

    A process that ran under torchrun / ``accelerate launch`` (it joined and left a process group)
    ends here with ``os._exit(status)`` once its output is flushed and everything it wrote is closed:
    gloo's worker threads can still drop tensors that hold Python objects while the interpreter is
    finalising, and under load that made a finished rank abort in its teardown ("terminate called
    without an active exception", about 1 run in 50 on 2 busy cores) although its work was complete.
    The run directory is written atomically by then, the run lock released and loggers closed, so
    skipping interpreter finalisation loses nothing."""
    status = _main(argv)
    if _LEFT_GROUP:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RankwiseError as exc:
        if not _is_main_rank():  # under torchrun: one message, from rank 0
            return 2
        message = str(exc)
        first, _, rest = message.partition("\n")
        print(f"rankwise {args.command}: error: {first}", file=sys.stderr)
        if rest:  # e.g. the config diff of a refused resume
            print(rest, file=sys.stderr)
        return 2
    except OSError as exc:  # a write the engine did not wrap: disk full, read-only, ...
        from rankwise.io import storage_error

        error = storage_error(exc, exc.filename or "a file")
        if error is None:
            raise
        print(f"rankwise {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
