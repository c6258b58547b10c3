"""The command lines of the project: argument parsing of every installed command.

========================  ==============================  ======================================
command                   here                            does the work
========================  ==============================  ======================================
``mpsl-run``              :func:`run`                     :mod:`mpsl_flwr.ops.launch`
``mpsl-deploy``           :func:`deploy`                  :mod:`mpsl_flwr.ops.deploy`
``mpsl-compare``          :func:`compare`                 :mod:`mpsl_flwr.tools.compare`
``mpsl-costs``            :func:`costs`                   :mod:`mpsl_flwr.tools.cost_table`
``mpsl-traffic-sweep``    :func:`traffic_sweep`           :mod:`mpsl_flwr.tools.traffic_sweep`
``mpsl-partition-plot``   :func:`partition_plot`          :mod:`mpsl_flwr.tools.partition_plot`
``mpsl-label-attack``     :func:`label_attack`            :mod:`mpsl_flwr.tools.label_attack`
``mpsl-privacy-frontier`` :func:`privacy_frontier`        :mod:`mpsl_flwr.tools.privacy_frontier`
``mpsl-paper-claims``     :func:`paper_claims`            :mod:`mpsl_flwr.tools.paper_claims`
``mpsl-centralized``      :func:`centralized`             :mod:`strategies.centralized`
``mpsl-pretrain``         :func:`pretrain`                :mod:`mpsl_flwr.tools.pretrain`
========================  ==============================  ======================================

Without the installed scripts, ``python -m mpsl_flwr.cli <command> [ARGS...]`` runs the
same, e.g. ``python -m mpsl_flwr.cli run --nodes 10`` (``make run``). Each command
imports only the module that does its work, when it runs, so that ``mpsl-run`` does
not load torch for ``mpsl-costs``. A leaf: nothing in the app imports it.
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpsl_flwr.config import parse_overrides
from mpsl_flwr.project import PROJECT_DIR
from mpsl_flwr.user_errors import USER_ERRORS


def _summary(doc: str | None) -> str:
    """The first paragraph of a module docstring: a command's description."""
    return (doc or "").split("\n\n")[0]


def _overrides(run_config: str) -> dict[str, Any]:
    """``--run-config 'key=value ...'`` as a dict (TOML values, as ``flwr run``), with
    relative local paths made absolute against the directory the command runs in."""
    from mpsl_flwr.ops.runs import absolute_local_paths

    values = parse_overrides([run_config]) if run_config else {}
    return {**values, **absolute_local_paths(values)}


def _run_config_arg(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--run-config", default="", help=text)


_DEBUG_HELP = "on an error, show the full traceback instead of one line"


def _parser(prog: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The argument parser of installed command ``prog``, with ``--debug``."""
    parser = argparse.ArgumentParser(prog=prog, **kwargs)
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    return parser


def _debug_asked(argv: list[str] | None) -> bool:
    """Whether ``argv`` has ``--debug``, read as the command's own parser reads it."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--debug", action="store_true")
    return bool(probe.parse_known_args(sys.argv[1:] if argv is None else argv)[0].debug)


Command = Callable[[list[str] | None], int | None]


def _command(func: Command) -> Command:
    """Installed command ``mpsl-<name>``: a user error (bad run config, missing dataset)
    prints as ``mpsl-<name>: error: ...`` and exits 2 (as argparse's own errors do), its
    traceback only with ``--debug``."""
    prog = "mpsl-" + func.__name__.replace("_", "-")

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int | None:
        try:
            return func(argv)
        except USER_ERRORS as err:
            if _debug_asked(argv):
                raise
            # As argparse's own errors: exit 2. A dataset error's expected folder tree
            # follows its one line: the fix, spelled out.
            print(f"{prog}: error: {str(err).strip()}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--nodes 0`` is refused at parse time)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


@_command
def run(argv: list[str] | None = None) -> int:
    """``mpsl-run``: one ``flwr run`` simulation on a private SuperLink."""
    from mpsl_flwr.ops import launch

    parser = _parser("mpsl-run", description=_summary(launch.__doc__))
    parser.add_argument("--nodes", type=_positive_int, default=10, help="simulated SuperNodes")
    _run_config_arg(parser, "overrides, 'key=value ...' as for flwr run")
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    parser.add_argument(
        "--flwr-home",
        type=Path,
        default=None,
        help="FLWR_HOME of the private SuperLink (default: a temporary dir)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--app-dir", type=Path, default=PROJECT_DIR)
    args = parser.parse_args(argv)
    return launch.main(
        _overrides(args.run_config),
        args.nodes,
        flwr_home=args.flwr_home,
        app_dir=args.app_dir,
        cpus_per_client=args.cpus_per_client,
        gpus_per_client=args.gpus_per_client,
        timeout=args.timeout,
    )


def _pick(value: float | None, fast_value: Any, fast: bool) -> float | None:
    """An explicit value wins; else ``fast_value`` under --fast; else Flower's default."""
    return value if value is not None else fast_value if fast else None


@_command
def deploy(argv: list[str] | None = None) -> int:
    """``mpsl-deploy``: a real SuperLink and SuperNodes on loopback, one run."""
    from mpsl_flwr.ops import deploy as ops_deploy
    from mpsl_flwr.ops.deploy import FAST, SUPEREXEC_POLL_ENV, DeployOptions

    parser = _parser(
        "mpsl-deploy",
        description=_summary(ops_deploy.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """
            examples:
              mpsl-deploy --nodes 2
              mpsl-deploy --nodes 3 --tls --auth --run-config "epochs=1 batch-size=32"
            """
        ),
    )
    parser.add_argument(
        "--nodes", type=_positive_int, default=2, help="SuperNodes (= data partitions)"
    )
    parser.add_argument("--tls", action="store_true", help="HTTPS with a generated test CA")
    parser.add_argument(
        "--auth", action="store_true", help="SuperNode authentication (implies --tls)"
    )
    _run_config_arg(parser, "overrides, 'key=value ...' as for flwr run")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where FLWR_HOMEs, certificates, keys and logs go (default: a temporary dir, "
        "removed afterwards unless --keep-workdir)",
    )
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument(
        "--superexec-poll",
        type=float,
        default=0.1,
        help=f"seconds between SuperExec task polls ({SUPEREXEC_POLL_ENV}; Flower: 1.0)",
    )
    parser.add_argument(
        "--warm-clientapp",
        action="store_true",
        help="SuperNodes in --isolation process, each served by one long-lived ClientApp "
        "process (mpsl_flwr.ops.warm_clientapp) instead of a new process per message",
    )
    parser.add_argument(
        "--node-poll",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cap the SuperNode's idle poll (Flower 1.41: a fixed 3 s) by running it "
        "through mpsl_flwr.ops.fast_flower, an opt-in patch; e.g. 0.2",
    )
    parser.add_argument(
        "--object-pull-backoff",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first retry of a message payload still being uploaded (Flower 1.41: 1 s), "
        "in the ServerApp, SuperNodes and ClientApp executors; opt-in patch; e.g. 0.02",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="shorthand for --warm-clientapp --node-poll 0.2 --object-pull-backoff 0.02",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="no Fleet proxy: SuperNodes dial the SuperLink, whose Control API they can "
        "then reach too (the default with --tls puts nginx in front; docs/deployment.md)",
    )
    parser.add_argument(
        "--proxy-host",
        default="127.0.0.1",
        help="where the Fleet proxy listens (0.0.0.0 for SuperNodes on other hosts)",
    )
    parser.add_argument(
        "--public-name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP for the server certificate (how remote SuperNodes dial "
        "the proxy); repeatable",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="run timeout, seconds")
    parser.add_argument("--app-dir", type=Path, default=PROJECT_DIR)
    args = parser.parse_args(argv)
    overrides = _overrides(args.run_config)
    options = DeployOptions(
        nodes=args.nodes,
        tls=args.tls or args.auth,
        auth=args.auth,
        workdir=args.workdir,
        superexec_poll_interval=args.superexec_poll,
        warm_clientapp=args.warm_clientapp or args.fast,
        node_poll=_pick(args.node_poll, FAST["node_poll"], args.fast),
        object_pull_backoff=_pick(args.object_pull_backoff, FAST["object_pull_backoff"], args.fast),
        proxy=False if args.direct else None,
        proxy_host=args.proxy_host,
        public_names=tuple(args.public_name),
    )
    return ops_deploy.main(
        options,
        overrides,
        app_dir=args.app_dir,
        timeout=args.timeout,
        keep_workdir=args.keep_workdir,
    )


def _comma_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _seeds_arg(parser: argparse.ArgumentParser) -> None:
    """``--seeds``, as every tool that repeats its runs over seeds takes it."""
    parser.add_argument("--seeds", type=_int_list, default=[0, 1, 2], metavar="S[,S...]")


@_command
def compare(argv: list[str] | None = None) -> int:
    """``mpsl-compare``: strategies side by side over seeds (the paper's Tables 1-2)."""
    from mpsl_flwr.registry import STRATEGIES
    from mpsl_flwr.tools import compare as tool

    parser = _parser("mpsl-compare", description=_summary(tool.__doc__))
    parser.add_argument("--strategies", type=_comma_list, default=list(STRATEGIES))
    _seeds_arg(parser)
    parser.add_argument("--nodes", type=_positive_int, default=10)
    _run_config_arg(parser, "'key=value ...' shared by all runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    args.overrides = _overrides(args.run_config)
    return tool.run(args)


def _sweep_args(parser: argparse.ArgumentParser, strategies: list[str], nodes_help: str) -> None:
    """``--sizes``, ``--strategies`` and ``--nodes`` of a sweep over encoder sizes."""
    from mpsl_flwr.models.sizes import ENCODER_SIZES

    parser.add_argument("--sizes", nargs="+", default=list(ENCODER_SIZES), choices=ENCODER_SIZES)
    parser.add_argument("--strategies", nargs="+", default=strategies, choices=strategies)
    parser.add_argument("--nodes", type=_positive_int, default=10, help=nodes_help)


@_command
def costs(argv: list[str] | None = None) -> int:
    """``mpsl-costs``: measured client and server compute per strategy and encoder size."""
    from mpsl_flwr.registry import STRATEGIES
    from mpsl_flwr.tools import cost_table as tool

    parser = _parser("mpsl-costs", description=_summary(tool.__doc__))
    _sweep_args(parser, list(STRATEGIES), "clients sharing the global batch")
    _run_config_arg(parser, "'key=value ...' (dataset, image-size..)")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "outputs" / "costs")
    args = parser.parse_args(argv)
    args.overrides = _overrides(args.run_config)
    return tool.run(args)


@_command
def traffic_sweep(argv: list[str] | None = None) -> int:
    """``mpsl-traffic-sweep``: MB per client per epoch against encoder size (Figure 3)."""
    from mpsl_flwr.tools import traffic_sweep as tool

    parser = _parser("mpsl-traffic-sweep", description=_summary(tool.__doc__))
    _sweep_args(parser, list(tool.STRATEGIES), "clients")
    parser.add_argument(
        "--samples-per-client",
        type=float,
        default=0.0,
        help="training samples per client per epoch (default: the train split / nodes)",
    )
    _run_config_arg(parser, "'key=value ...' (dataset, image-size)")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "outputs" / "traffic")
    args = parser.parse_args(argv)
    args.overrides = _overrides(args.run_config)
    return tool.run(args)


@_command
def partition_plot(argv: list[str] | None = None) -> None:
    """``mpsl-partition-plot``: run-config ``key=value`` overrides plus partition count
    and output."""
    from mpsl_flwr.tools import partition_plot as tool

    parser = _parser("mpsl-partition-plot", description=(tool.__doc__ or "").splitlines()[0])
    _run_config_arg(parser, "overrides, 'key=value ...' as for flwr run")
    parser.add_argument(
        "--num-partitions", type=_positive_int, required=True, help="number of clients"
    )
    parser.add_argument("--out", default="partitions.png", help="output PNG path")
    parser.add_argument("--plot-type", choices=("bar", "heatmap"), default="bar")
    parser.add_argument("--size-unit", choices=("absolute", "percent"), default="absolute")
    args = parser.parse_args(argv)
    args.overrides = _overrides(args.run_config)
    tool.run(args)


def _attacked_run_args(parser: argparse.ArgumentParser, run_config_help: str) -> None:
    """The arguments of a recorded, attacked run (``mpsl-label-attack`` and the sweep of
    ``mpsl-privacy-frontier``): nodes, run config, steps attacked."""
    parser.add_argument(
        "--nodes", type=_positive_int, default=10, help="in-process nodes (clients)"
    )
    _run_config_arg(parser, run_config_help)
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=3,
        metavar="K",
        help="attack the first K steps of each attacked epoch",
    )


@_command
def label_attack(argv: list[str] | None = None) -> int:
    """``mpsl-label-attack``: label inference attacks on what the MPSL server receives."""
    from mpsl_flwr.tools import label_attack as tool

    parser = _parser(
        "mpsl-label-attack",
        description=_summary(tool.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _attacked_run_args(parser, "'key=value ...' of the attacked run (dataset, epochs, ...)")
    parser.add_argument(
        "--epochs-attacked",
        type=_int_list,
        default=[1],
        metavar="E[,E...]",
        help="epochs (from 1) whose steps are recorded and attacked (default: 1)",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "outputs" / "label-attack")
    args = parser.parse_args(argv)
    args.overrides = _overrides(args.run_config)
    return tool.run(args)


@_command
def privacy_frontier(argv: list[str] | None = None) -> int:
    """``mpsl-privacy-frontier``: accuracy against the best label attack, per defence."""
    from mpsl_flwr.tools import privacy_frontier as tool

    parser = _parser(
        "mpsl-privacy-frontier",
        description=_summary(tool.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _attacked_run_args(parser, "'key=value ...' for every run (default: a small run per task)")
    parser.add_argument(
        "--tasks", nargs="+", default=list(tool.TASKS), metavar="DATASET", help="datasets"
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=None,
        choices=sorted({p for p, _ in tool.SETTINGS}),
        help="label-privacy values of the sweep to run (default: all)",
    )
    _seeds_arg(parser)
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "outputs" / "privacy-frontier")
    args = parser.parse_args(argv)
    args.overrides = _overrides(args.run_config)
    return tool.run(args)


@_command
def paper_claims(argv: list[str] | None = None) -> int:
    """``mpsl-paper-claims``: each claim of the paper measured here, with a verdict by rule."""
    from mpsl_flwr.models.sizes import ENCODER_SIZES
    from mpsl_flwr.tools import paper_claims as tool

    parser = _parser(
        "mpsl-paper-claims",
        description=_summary(tool.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        type=_int_list,
        default=list(tool.CLAIMS),
        metavar="K[,K...]",
        help=f"claims to measure (default: all, {','.join(map(str, tool.CLAIMS))})",
    )
    _seeds_arg(parser)
    parser.add_argument(
        "--nodes", type=_positive_int, default=10, help="Ray nodes of every federated run"
    )
    parser.add_argument(
        "--clients",
        type=_int_list,
        default=list(tool.DEFAULT_CLIENTS),
        metavar="N[,N...]",
        help="claims 1 and 4: client counts, each a multiple of --nodes "
        "(clients-per-node = N / nodes)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=list(tool.DEFAULT_BATCH_SIZES),
        metavar="B[,B...]",
        help="claim 6: global batch sizes",
    )
    parser.add_argument(
        "--min-steps",
        type=_positive_int,
        default=3,
        help="claim 6: the training set holds at least this many steps of the largest B",
    )
    parser.add_argument(
        "--sizes",
        type=_comma_list,
        default=list(ENCODER_SIZES),
        metavar="SIZE[,SIZE...]",
        help="claim 5: encoder sizes, smallest first",
    )
    _run_config_arg(parser, "'key=value ...' applied to every run (claim keys win)")
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="checkpoint passed as run-config pretrained= to every training run",
    )
    parser.add_argument(
        "--out", type=Path, default=PROJECT_DIR / "docs" / "results" / "paper-claims"
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=PROJECT_DIR / "outputs" / "paper-claims",
        help="where every run's own files go (checkpoints included; keep them out of docs/)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(tool.CLAIMS))
    if unknown:
        parser.error(f"unknown claims {unknown}; choose from {list(tool.CLAIMS)}")
    bad_sizes = sorted(set(args.sizes) - set(ENCODER_SIZES))
    if bad_sizes:
        parser.error(f"unknown sizes {bad_sizes}; choose from {', '.join(ENCODER_SIZES)}")
    args.overrides = _overrides(args.run_config)
    return tool.run(args)


@_command
def centralized(argv: list[str] | None = None) -> None:
    """``mpsl-centralized [--run-config 'key=value ...']``: centralized training, the same
    keys as ``flwr run``, no Flower at all."""
    import strategies.centralized as module
    from mpsl_flwr.config import resolve_config
    from strategies.runner import run_experiment

    parser = _parser("mpsl-centralized", description=(module.__doc__ or "").splitlines()[0])
    _run_config_arg(parser, "overrides, 'key=value ...' as for flwr run")
    args = parser.parse_args(argv)
    cfg = resolve_config(_overrides(args.run_config)).replace(strategy="centralized")
    run_experiment(cfg, grid=None)


@_command
def pretrain(argv: list[str] | None = None) -> int:
    """``mpsl-pretrain [--run-config 'key=value ...'] --out PATH``: contrastive image-text
    pre-training that writes a checkpoint for run-config ``pretrained``."""
    from mpsl_flwr.tools import pretrain as tool

    parser = _parser(
        "mpsl-pretrain",
        description=_summary(tool.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _run_config_arg(parser, "overrides, 'key=value ...' as for flwr run (model-size, epochs..)")
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_DIR / "outputs" / "pretrained" / "encoder.pt",
        help="checkpoint to write (its loss history goes beside it, as .json)",
    )
    args = parser.parse_args(argv)
    return tool.run(_overrides(args.run_config), args.out.expanduser().absolute())


COMMANDS: dict[str, Callable[[list[str] | None], int | None]] = {
    "run": run,
    "deploy": deploy,
    "compare": compare,
    "costs": costs,
    "traffic-sweep": traffic_sweep,
    "partition-plot": partition_plot,
    "label-attack": label_attack,
    "privacy-frontier": privacy_frontier,
    "paper-claims": paper_claims,
    "centralized": centralized,
    "pretrain": pretrain,
}
"""``python -m mpsl_flwr.cli <command>``: the installed ``mpsl-<command>`` scripts."""


def main(argv: list[str] | None = None) -> int | None:
    """``python -m mpsl_flwr.cli <command> [ARGS...]``."""
    parser = argparse.ArgumentParser(prog="python -m mpsl_flwr.cli", description=_summary(__doc__))
    parser.add_argument("command", choices=list(COMMANDS), help="mpsl-<command>")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (see --help)")
    ns = parser.parse_args(argv)
    return COMMANDS[ns.command](ns.args)


if __name__ == "__main__":
    sys.exit(main())
