"""The command line: ``python run_bench.py method=... suite=... [budget=...] [stage=...]``.

User mistakes (an unknown name, a bad option, unreadable data) print one line and exit with 2.
"""

from __future__ import annotations

import errno
import sys
import threading
from pathlib import Path
from collections.abc import Callable
from typing import Any

from bench.provenance import PROJECT_ROOT

CONF_DIR = PROJECT_ROOT / "conf"
GROUPS = {"method": "METHODS", "suite": "SUITES", "backbone": "BACKBONES", "protocol": "PROTOCOLS"}
# config groups with no registry: their options are the files in conf/<group>/ (the words of the error's list)
FILE_GROUPS = {
    "budget": "Known budgets",
    "experiment": "Known experiments (conf/experiment/)",
    "results": "Known results stores (conf/results/; any other store is results.url=...)",
    "hydra/launcher": "Known launchers (conf/hydra/launcher/ and Hydra's installed plugins)",
}


def _fail(msg: str, code: int = 2) -> None:
    from bench import distributed

    w = distributed.world()
    who = f"rank {w.rank} of {w.size}: " if w.distributed else ""
    print(f"error: {who}{msg}", file=sys.stderr)
    raise SystemExit(code)


#: the errors of a file system that will not take a write: full, over quota, too large, read-only, not allowed, no
#: such folder (a path under /proc or a deleted mount)
UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT}


def _plugin_options(group: str) -> set[str]:
    """The options of a config group that installed Hydra plugins register (e.g. hydra/launcher=submitit_local from
    hydra-submitit-launcher), beside the project's own files in conf/<group>/."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # discovers the installed plugins, which register their configs
    node: Any = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return {str(k).removesuffix(".yaml") for k in node} if isinstance(node, dict) else set()


def _forget_hydra_dir(cfg: Any) -> None:
    """A refused command leaves nothing behind: Hydra's own folder for this job (its config copy and log, which hold
    nothing the error line does not say) goes, and so do the folders above it that it alone filled, up to and
    including ``runs_dir``. Folders holding anything else stay."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    try:
        out = Path(HydraConfig.get().runtime.output_dir).resolve()
        top = Path(str(cfg.runs_dir)).resolve()
    except (ValueError, TypeError):  # no Hydra job context (a direct call of the app): nothing of Hydra's to remove
        return
    if top not in out.parents:
        return  # a hydra.run.dir outside runs_dir is the user's choice: left alone
    shutil.rmtree(out, ignore_errors=True)
    for d in out.parents:
        if d == top.parent:
            break
        try:
            d.rmdir()  # only an empty folder: another job's or the user's files are never touched
        except OSError:
            break


def _distributed_argv(argv: list[str]) -> list[str]:
    """Under torchrun: a sweep is refused (every process would run the whole sweep, each cell N times, none
    data-parallel; sweep with Hydra's launchers instead, each job torchrun'ing its own processes), and only the main
    process keeps Hydra's run folder and log."""
    import os

    from bench import distributed

    if not distributed.launched():
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        _fail(
            "-m/--multirun under torchrun: each process would run the whole sweep on its own. Run one torchrun per "
            "sweep job (e.g. a shell loop over seed=0 seed=1 ...), or sweep without torchrun"
        )
    if os.environ.get("RANK", "0") != "0":
        quiet = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none", "hydra.run.dir=."]
        argv = [*argv, *quiet]
    return argv


def preflight(argv: list[str]) -> list[str]:
    """Check registry names on the command line before Hydra, and pick the default budget."""
    import bench.protocols  # noqa: F401  (registers protocols)
    from bench import registry

    from bench.types import folder_problem

    # Hydra makes its own log folder under runs_dir before the app runs: a runs_dir that cannot be one is refused
    # here, by name, instead of in Hydra's traceback
    runs = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("runs_dir=")), "runs")
    if "," not in runs and (why := folder_problem(Path(runs))) is not None:
        _fail(f"runs_dir={runs}: {why}")
    has_budget = False
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("protocol."):
            _fail(
                f"{arg}: a protocol's options are protocols.<protocol>.<task kind>.<option>, e.g. "
                f"protocols.finetune.segmentation.lr=3e-4 (protocol=NAME only selects which protocol runs)"
            )
        if key in FILE_GROUPS:
            # an experiment pins its own budget: a default added here would override it from the command line
            has_budget = has_budget or key in ("budget", "experiment")
            for v in value.split(","):
                if (CONF_DIR / key / f"{v}.yaml").is_file():
                    continue
                plugins = _plugin_options(key)  # discovering the plugins imports them: only when a file is missing
                if v not in plugins:
                    known = sorted({p.stem for p in (CONF_DIR / key).glob("*.yaml")} | plugins)
                    _fail(f"unknown {key} {v!r}. {FILE_GROUPS[key]}: {', '.join(known)}")
        if key in GROUPS and value not in ("null", ""):
            reg = getattr(registry, GROUPS[key])
            # a,b: a sweep's values; [a,b]: one list value (protocol=[voxel_probe,knn_seg])
            for v in value.strip("[]").split(","):
                if v not in reg:
                    _fail(reg.unknown_message(v))
    from bench.plan import compose

    chosen = _compose_choices(argv, compose)
    argv = bare_method_options(argv, chosen if chosen is not None else compose())
    if chosen is not None:
        check_override_keys(argv, chosen)
    if not has_budget:
        import torch

        # before the first override, not last (Hydra's flags, `--cfg job`, take the arguments after them) and not
        # first (argparse takes no override before a flag such as -m)
        budget = f"budget={'standard' if torch.cuda.is_available() else 'quick'}"
        at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), len(argv))
        argv = [*argv[:at], budget, *argv[at:]]
    return argv


def _compose_choices(argv: list[str], compose: Any) -> Any:
    """The config of the command line's group choices (method, suite, budget, experiment, ...), once for both
    checks below; None for a sweep (``-m``, whose values Hydra expands) or a bad choice (Hydra's message says it)."""
    if any(a in ("-m", "--multirun") for a in argv):
        return None
    groups = [a for a in argv if "=" in a and a.split("=", 1)[0].lstrip("+") in {*FILE_GROUPS, "results", *GROUPS}]
    try:
        return compose(groups)
    except Exception:  # a bad group choice: Hydra's own message says it
        return None


def check_override_keys(argv: list[str], cfg: Any) -> None:
    """A misspelt key is one line naming it and the keys that level knows (exit 2), instead of Hydra's advice to
    append it with ``+``, after which the key would be silently ignored. ``cfg``: the config of the command
    line's group choices."""
    from omegaconf import OmegaConf

    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if key.startswith(("+", "~", "hydra/")) or key == "hydra" or key.startswith("hydra."):
            continue
        node: Any = cfg
        path: list[str] = []
        for part in key.split("."):
            if not OmegaConf.is_dict(node):
                break
            if part not in node:
                where = ".".join(path) or "the run config"
                known = ", ".join(sorted(str(k) for k in node.keys()))
                _fail(f"{arg}: {where} has no option {part!r}; its options: {known}")
            node, path = node[part], [*path, part]


def bare_method_options(argv: list[str], cfg: Any = None) -> list[str]:
    """``checkpoint=PATH`` means ``++method.config.checkpoint=PATH`` when it is an option of the chosen method and
    not a top-level key (``python run_bench.py method=external checkpoint=PATH format=asa``). ``cfg``: a composed
    run config for its top-level keys and default method (composed here when not given)."""
    import dataclasses

    from bench import registry

    if cfg is None:
        from bench.plan import compose

        cfg = compose()
    top = set(cfg) | {"defaults", "hydra"}
    method = next((a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+~") == "method"), None)
    if method is None:
        method = cfg.method.name
    if "," in method or method not in registry.METHODS:
        return argv
    fields = {f.name for f in dataclasses.fields(registry.METHODS.get(method).Config)}
    out = []
    for arg in argv:
        key = arg.split("=", 1)[0] if "=" in arg and not arg.startswith("-") else None
        if key and key.isidentifier() and key not in top and key not in GROUPS and key in fields:
            arg = f"++method.config.{arg}"  # ++: also options the YAML leaves at their default
        out.append(arg)
    return out


def _lost_peer(e: BaseException) -> bool:
    """An error of a collective because another process of the job stopped (killed, or failed on its own)."""
    from torch import distributed as tdist

    from bench import distributed

    if not distributed.world().distributed:
        return False
    text = str(e).lower()
    return isinstance(e, tdist.DistBackendError) or any(
        k in text for k in ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out")
    )


_STOPPING = threading.Lock()


def _on_sigterm(signum: int, frame: Any) -> None:
    """torchrun stops the other processes of a job with SIGTERM when one fails: say so in one line, not silently."""
    import os

    if not _STOPPING.acquire(blocking=False):  # the other path (handler or watcher) is already stopping the process
        return
    rank, size = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    print(
        f"error: rank {rank} of {size}: stopped by torchrun because another process of this job failed (torchrun's "
        f"report below names it and its cause); rerun the same command to resume from the last checkpoint",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signum)  # no cleanup that could block on the dead peer; every file write is atomic


def _stop_on_sigterm() -> None:
    """Install :func:`_on_sigterm` so that it runs even while the main thread waits inside a collective.

    Python runs a signal handler only between the main thread's bytecodes; a rank blocked in a gloo receive from its
    dead peer never gets there, and torchrun kills it 30 s later without the line. Python's C-level handler still
    writes the signal's number to the wakeup fd at once, and a thread reading it acts then (the GIL is free: the
    blocked collective released it). The Python-level handler stays as the path for a main thread that is running."""
    import os
    import signal

    r, w = os.pipe()
    os.set_blocking(w, False)  # the C handler must never block on a full pipe
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch() -> None:
        while data := os.read(r, 64):
            if signal.SIGTERM in data:
                _on_sigterm(signal.SIGTERM, None)

    threading.Thread(target=watch, name="sigterm-watch", daemon=True).start()

    def forked_child() -> None:
        # a forked worker (a DataLoader's) shares the pipe but not the watcher: its SIGTERM would stop this rank
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    os.register_at_fork(after_in_child=forked_child)


def main(register: Callable[[], None] | None = None) -> int:
    """``register`` imports the packages that register datasets and methods: called here and in every job a Hydra
    launcher starts (joblib's and submitit's job processes unpickle the job, not run_bench.py, so the imports at the
    top of run_bench.py never run there)."""
    from bench import distributed

    if distributed.launched():
        _stop_on_sigterm()
    sys.argv = [sys.argv[0]] + _distributed_argv(preflight(sys.argv[1:]))
    import warnings

    # conf/hydra/launcher/joblib.yaml is named as the plugin's schema on purpose (hydra/launcher=joblib) and is
    # checked against it: Hydra's notice that this is deprecated is not the user's business
    warnings.filterwarnings("ignore", message=".*is validated against ConfigStore schema with the same name")
    import hydra
    from omegaconf import DictConfig

    from bench.plan import UserError
    from bench.registry import UnknownNameError
    from bench.types import DataError

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> None:
        import bench.protocols  # noqa: F401  (registers the protocols, also in a launcher's job process)
        from bench import distributed, runner

        if register is not None:
            register()
        try:
            runner.run(cfg)
        except (UserError, DataError, UnknownNameError) as e:
            _forget_hydra_dir(cfg)
            _fail(str(e))
        except OSError as e:
            if e.errno not in UNWRITABLE or (e.filename is None and e.errno == errno.ENOENT):
                raise  # not the machine's refusal to store a file: a bug, shown with its traceback
            _forget_hydra_dir(cfg)
            code = errno.errorcode.get(e.errno or 0, e.errno)
            _fail(
                f"{e.filename or 'a file'}: {e.strerror} (errno {code}); what was being "
                "written was left as it was before (every file is written whole or not at all): free space or "
                "choose another folder, then rerun the same command to resume"
            )
        except RuntimeError as e:
            if not _lost_peer(e):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            _fail(
                f"another process of this job stopped ({first}); nothing half-written is kept: rerun the same "
                f"command to resume from the last checkpoint (torchrun's report below names the process that failed)",
                code=1,
            )
        finally:
            distributed.shutdown()

    app()
    return 0
