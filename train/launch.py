"""The command line every trainer shares: the multi-process flags, compile-only planning, and its absl `main`.

One process per host (or per GPU where the launcher starts one per GPU), each running the same command:
  TPU pod slice:  gcloud compute tpus tpu-vm ssh NAME --worker=all --command="python -m train.vit ..."
                  (the processes find each other through the TPU VM metadata)
  SLURM:          srun --ntasks=N python -m train.vit ...    (auto-detected from SLURM's environment)
  Open MPI:       mpirun -np N python -m train.vit ...
  by hand:        python -m train.vit ... --coordinator_address=HOST0:PORT --num_processes=N --process_id=i
One multi-GPU host needs nothing of this: one process drives all its GPUs.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from absl import flags

from vitsam import parallel
from vitsam.extras import missing_package_message

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 in a multi-process run started by hand "
    "(with --num_processes and --process_id); SLURM, Open MPI and TPU pods are detected without it")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "how many processes the run has (with --coordinator_address)")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index, 0 … num_processes − 1")
TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "seconds a silent (dead) process goes unnoticed before the others stop with an "
    "error instead of hanging; the start-up wait for every process to join is this or 5 minutes, the longer")
COMPILE_FOR = flags.DEFINE_string(
    "compile_for", None, "compile the train step for this target without running it (tpu:v5e:16x16, "
    "tpu:v4:2x2x4, tpu:v5p:2x2x2, cpu:8) and write WORKDIR/compile_plan.json; needs no data or weights")


def _one_line(error: BaseException) -> str:
    """An exception from flag / config parsing as one line (ml_collections' messages are quoted, multi-line)."""
    text = str(error)
    if isinstance(error, (AttributeError, KeyError)) and len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].encode().decode("unicode_escape")
        text = f"unknown config field {text}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def define_config(program: str, default_path) -> flags.FlagHolder:
    """The `--config` flag (a configs/*.py file, fields overridable as --config.field=value). ml_collections
    reads the command line's overrides when the flag is defined, so a misspelt field or a missing file fails
    here: one line on stderr and exit status 2."""
    import sys

    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file("config", str(default_path), "training recipe (a configs/*.py file)")
    except Exception as e:  # noqa: BLE001 - a bad --config on the command line
        sys.stderr.write(f"{program}: error: {_one_line(e)}\n")
        sys.exit(2)


def run(program: str, main: Callable) -> None:
    """`absl.app.run(main)` with flag and config errors (an unknown or misspelt `--config.*` field, a value of the
    wrong type, a missing config file) as one line on stderr and exit status 2, instead of tracebacks."""
    import sys

    from absl import app

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except Exception as e:  # noqa: BLE001 - any parsing failure is the user's input: say it in one line
            sys.stderr.write(f"{program}: error: {_one_line(e)}\n")
            sys.exit(2)

    app.run(main, flags_parser=parse)


@contextlib.contextmanager
def errors_in_one_line(program: str):
    """Expected failures (a bad config or flag, a missing dataset, a NaN loss, a full disk) end the program with one
    line on stderr, "PROGRAM: error: ...", and exit status 1."""
    from train import loop

    try:
        yield
    except ModuleNotFoundError as e:  # an optional package of an extra (the input pipelines need [data])
        message = missing_package_message(e)
        if message is None:
            raise
        raise SystemExit(f"{program}: error: {message}") from None
    except (ValueError, OSError, loop.NonFiniteLossError) as e:  # OSError: a config file that did not load, a full disk
        raise SystemExit(f"{program}: error: {_one_line(e)}") from None


@contextlib.contextmanager
def exit_beside_background_compiles():
    """Ends the process at once, with the exit status and message it would have had, where it would otherwise exit
    while a background compile of the loop runs (`loop.compiling_in_background`: a run stopped by a signal or an
    error before it needed that program). Python's shutdown would abort it there (SIGABRT, "FATAL: exception not
    rethrown", and stdout's last lines lost) as a daemon thread leaves XLA's compile; the checkpoints and
    metrics are already written when the loop returns or raises."""
    import os
    import sys
    import traceback

    from train import loop

    def exit_now(code) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    try:
        yield
    except SystemExit as e:
        if not loop.compiling_in_background():
            raise
        if e.code is None or isinstance(e.code, int):
            exit_now(e.code or 0)
        sys.stderr.write(f"{e.code}\n")
        exit_now(1)
    except BaseException as e:
        if not loop.compiling_in_background():
            raise
        traceback.print_exception(e)
        exit_now(130 if isinstance(e, KeyboardInterrupt) else 1)
    if loop.compiling_in_background():
        exit_now(0)


def command_main(program: str, train: Callable, plan_task: Callable, config_flag, workdir_flag,
                 model_fields: Callable | None = None) -> Callable:
    """The absl `main` of a trainer.

    train(config, workdir) -> final eval dict; plan_task(config) -> a `loop.Task` built without data or weights
    (for --compile_for); model_fields(config) -> a dict describing the model for the plan. Expected failures end
    as one-line errors (`errors_in_one_line`)."""

    def main(argv) -> None:
        import jax
        from absl import app, logging

        from train import plan

        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console for the bar
            logging.set_verbosity(logging.WARNING)
        cfg, workdir = config_flag.value, workdir_flag.value
        with exit_beside_background_compiles(), errors_in_one_line(program):
            if COMPILE_FOR.value:
                plan.prepare_platform(COMPILE_FOR.value)
                fields = model_fields(cfg) if model_fields else None
                plan.compile_plan(cfg, workdir, COMPILE_FOR.value, plan_task, model_fields=fields)
                return
            parallel.initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                                            timeout_s=max(TIMEOUT.value, 300), heartbeat_timeout_s=TIMEOUT.value)
            result = train(cfg, workdir)
            parallel.leave_distributed()
            if result and jax.process_index() == 0:
                print("final eval: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))

    return main
