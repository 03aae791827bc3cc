"""Ray under the search and the sweep: a fine-tuning search's runs as Ray Tune trials, a sweep's cells
as Ray tasks. Ray is the scheduler, the retry policy and the checkpoint store; nothing here schedules.

    --ray auto          the cluster this machine belongs to (RAY_ADDRESS, or the one `ray start` began)
    --ray HOST:PORT     the cluster whose head listens there (`ray start --head --port PORT`)
    --ray local         a Ray started here for this command, on this machine's CPUs

Every node needs edgebert with the [convert,distributed] extras, in the same Python version as the
driver. A trial gets the source's weights and the task files through Ray's object store, so the data
need not be on the nodes; a --teacher path must be readable on every node.

A trial (one fine-tuning run) reports each epoch to Tune with the run's work directory (model, optimizer
state, best weights so far) as its checkpoint, and its finished model as its last checkpoint; Tune keeps
them in the storage directory (`--storage`: a local path, or any URI pyarrow reads, such as s3://... or
gs://..., which a multi-node cluster needs unless the path is shared). A trial whose node dies is
restarted by Tune (FailureConfig) from its last checkpoint, elsewhere if need be: finetune() resumes
after the last finished epoch. A trial that fails for its own reasons (a diverging loss, a bad option)
reports its error and ends normally, so it is recorded once and not retried.

A finished trial's model is copied to OUT.search/<run>/ the moment Tune calls it complete, as a search
on this machine keeps its runs; a run found there is never trained again. A driver that is killed and
rerun restores the experiment (Tuner.restore), so unfinished trials resume from their last epoch. Ray's
restore is not atomic with the kill: its search state may be half-written (it then starts the experiment
over, and the kept runs only report themselves), or a trial's recorded checkpoint may already be gone
(that trial fails to restore, and is restarted once from scratch).

The experiment's name carries the digest of its inputs (source, data, options), so a changed input is
never resumed into an old experiment; the search directory refuses it first (finetune.claim_search_dir).

A sweep's cell (variant x mode x threads) is converted and measured by Ray tasks (RayCells), retried by Ray
when their worker or node dies; the driver writes every file of the sweep directory as a local sweep does.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from converters import finetune as ft
from converters.google_checkpoint import SOURCE_RECORD
from edgebert.bundle import process_alive
from edgebert.errors import UsageError

DISTRIBUTED_EXTRA = "pip install 'edgebert[distributed]'"
MAX_FAILURES = 3  # restarts of a trial whose process or node died (Tune's FailureConfig)
CONNECT_TIMEOUT_S = 5.0

Log = Callable[[str], None]


def parse_address(text: str) -> str:
    """`auto`, `local` or HOST:PORT; anything else is a UsageError naming the three forms."""
    text = (text or "").strip()
    if text in ("auto", "local"):
        return text
    host, _, port = text.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return text
    raise UsageError(f"--ray takes auto, local or HOST:PORT (the head's `ray start --head --port`), got {text!r}")


def import_ray():
    try:
        import ray
    except ImportError as error:
        raise UsageError(f"--ray needs Ray ({error.name} is missing): {DISTRIBUTED_EXTRA}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens at HOST:PORT."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"no Ray cluster answers at {address} ({reason.lower()}); start one there with "
                         f"`ray start --head --port {port}`, or use --ray local") from None


def connect(address: str, log: Log = lambda message: None) -> None:
    """Join (or, for `local`, start) the Ray cluster; a UsageError in one line when there is none."""
    address = parse_address(address)
    ray = import_ray()
    if ray.is_initialized():
        return
    if address not in ("auto", "local"):
        _check_reachable(address)
    runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}}
    common = {"runtime_env": runtime_env, "log_to_driver": False, "logging_level": logging.ERROR,
              "configure_logging": True}
    try:
        if address == "local":
            ray.init(include_dashboard=False, **common)
        else:
            ray.init(address=address, **common)
    except Exception as error:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError here
        raise UsageError(f"cannot join the Ray cluster at {address}: {ft.one_line_error(error)}") from None
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    log(f"ray: {address}: {len(nodes)} node{'s' * (len(nodes) != 1)}, "
        f"{int(ray.cluster_resources().get('CPU', 0))} CPUs")


def storage_path(storage: str | os.PathLike | None, default: Path) -> str:
    """A URI as given (s3://, gs://, file://...); a local path made absolute (Tune needs one)."""
    text = str(storage) if storage is not None else str(default)
    return text if "://" in text else str(Path(text).expanduser().resolve())


# ---------------------------------------------------------------------------------------------------
# The search's runs as Tune trials


@dataclasses.dataclass(frozen=True)
class TrialInputs:
    """What every trial gets through the object store: no path on the driver needs to exist on a node."""

    source: object  # converters.sources.Source
    train: object  # edgebert.tasks.TaskData
    train_bytes: bytes  # the files themselves: a run's identity holds their sha256
    dev: object
    dev_bytes: bytes
    options: ft.FinetuneOptions
    threads: int
    done: frozenset = frozenset()  # the runs the driver already holds, finished: not trained again


def _task_files(inputs: TrialInputs, root: Path):
    """The tasks as the driver read them, their files rewritten here under the same names."""
    tasks = []
    for name, task, data in (("train", inputs.train, inputs.train_bytes), ("dev", inputs.dev, inputs.dev_bytes)):
        path = root / "data" / name / Path(task.path).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        tasks.append(dataclasses.replace(task, path=path))
    return tasks


def _scratch_dir(kind: str, parent: str | None = None) -> Path:
    """A fresh folder for one trial or cell, named after this process; first, the folders of processes
    that are gone are removed (a trial killed with its node or driver never reaches its `finally`, and a
    real model's work folder is hundreds of MB)."""
    parent = Path(parent or tempfile.gettempdir())
    for stale in parent.glob(f"edgebert-{kind}-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"edgebert-{kind}-{os.getpid()}-", dir=parent))


def _trial(config: dict, inputs: TrialInputs | None = None) -> None:
    """One fine-tuning run, in a Tune trial: resumes from the trial's last checkpoint when Tune restarts it."""
    from ray import tune

    from converters.tf_import import tf

    tf.config.threading.set_intra_op_parallelism_threads(inputs.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    batch_size, learning_rate = int(config["cell"][0]), float(config["cell"][1])
    if ft.run_name(batch_size, learning_rate) in inputs.done:
        tune.report({"status": DONE_BEFORE})
        return
    options = dataclasses.replace(inputs.options, batch_size=batch_size, learning_rate=learning_rate)
    root = _scratch_dir("trial")
    work, model = root / "work", root / "model"
    resumed = 0
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(str(root / "restored"))
            if (root / "restored" / SOURCE_RECORD).is_file():  # the run had finished: report it again
                record = json.loads((root / "restored" / SOURCE_RECORD).read_text(encoding="utf-8"))["history"][-1]
                tune.report(_final(batch_size, learning_rate, record),
                            checkpoint=tune.Checkpoint.from_directory(str(root / "restored")))
                return
            (root / "restored").rename(work)
            resumed = (ft._read_state(work) or {}).get("epochs_done", 0)
        train, dev = _task_files(inputs, root)
        metric = dev.metric_names[0]

        def epoch_done(record: dict) -> None:
            tune.report({"status": "running", "epoch": record["epoch"], "train_loss": record["train_loss"],
                         f"dev_{metric}": record.get("dev", {}).get(metric)},
                        checkpoint=tune.Checkpoint.from_directory(str(work)))

        try:
            record = ft.finetune(inputs.source, train, dev, model, options, work_dir=work,
                                 progress=ft.Progress(on_epoch_end=epoch_done)).record
        except Exception as error:  # noqa: BLE001 - the run's own failure: recorded, not retried
            tune.report({"status": "failed", "error": ft.one_line_error(error)})
            return
        tune.report(_final(batch_size, learning_rate, record, resumed),
                    checkpoint=tune.Checkpoint.from_directory(str(model)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


DONE_BEFORE = "done before"


def _final(batch_size: int, learning_rate: float, record: dict, resumed: int = 0) -> dict:
    """The trial's entry; resumed_after_epoch > 0 when Tune restarted it from an epoch checkpoint."""
    entry = {**ft.trial_entry(batch_size, learning_rate, record), "resumed_after_epoch": resumed}
    return {"status": "ok", "trial_json": json.dumps(entry)}


class _Lines:
    """Tune's events as one line each on the terminal (Tune's own tables are turned off)."""

    def __init__(self, log: Log, metric: str, total: int, runs_dir: Path, keep: Callable):
        from ray import tune

        outer = self

        class Callback(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                outer.log(f"{outer.name(trial)}: started")

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if result.get("status") == "running":
                    score = result.get(f"dev_{outer.metric}")
                    outer.log(f"{outer.name(trial)}: epoch {result['epoch']}, train loss {result['train_loss']:.4f}"
                              + (f", dev {outer.metric} {score:.4f}" if score is not None else ""))
                elif result.get("status") == "failed":
                    outer.log(f"{outer.name(trial)}: failed: {result['error']}")
                elif result.get("status") == DONE_BEFORE:
                    outer.log(f"{outer.name(trial)}: done before, kept in {outer.runs_dir}")

            def on_trial_complete(self, iteration, trials, trial, **info):
                if (trial.last_result or {}).get("status") == "ok" and trial.checkpoint is not None:
                    outer.keep(trial)  # before the line below: a driver killed after it loses nothing
                outer.done += 1
                outer.log(f"[{outer.done}/{outer.total}] {outer.name(trial)}: finished")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.log(f"{outer.name(trial)}: its process or node failed{_why(trial)} (no restarts left)")

            def on_trial_recover(self, iteration, trials, trial, **info):
                outer.log(f"{outer.name(trial)}: its process or node failed{_why(trial)}; restarting from its last "
                          "checkpoint (if any)")

        self.log, self.metric, self.total, self.done = log, metric, total, 0
        self.runs_dir, self.keep = runs_dir, keep
        self.callback = Callback()

    @staticmethod
    def name(trial) -> str:
        cell = (trial.config or {}).get("cell")
        return ft.run_name(*cell) if cell else f"trial {trial.trial_id}"


def _why(trial) -> str:
    """The trial's last error as ` (one line)`: Tune's own tracebacks are turned off."""
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - its storage cannot be read: the line goes without the reason
        return ""
    error = getattr(error, "cause", None) or error  # a RayTaskError wraps the trial's own exception
    return f" ({ft.one_line_error(error)})" if error else ""


def tune_trials(*, storage: str | os.PathLike | None = None, cpus_per_trial: int = 1, log: Log = print,
                max_failures: int = MAX_FAILURES):
    """A `run_trials` for finetune.search that runs the runs as Ray Tune trials on the connected cluster."""
    if cpus_per_trial < 1:
        raise UsageError(f"--cpus-per-trial must be at least 1, got {cpus_per_trial}")

    def run(source, train, dev, runs_dir: Path, options: ft.FinetuneOptions, cells, progress) -> list[dict]:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: _Lines draws the progress
        # The experiment's state (which trials finished) saved every second, not every 10+: a driver killed
        # and rerun restarts fewer trials.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # a traceback per failure: _Lines gives a line
        from ray import tune

        runs_dir = Path(runs_dir).resolve()
        identity = ft.search_identity(source, train, dev, options)
        name = f"{runs_dir.name}-{ft.identity_key(identity)[:12]}"
        where = storage_path(storage, runs_dir / "ray")
        files = {"train_file": str(train.path), "dev_file": str(dev.path)}
        done = frozenset(ft.run_name(*cell) for cell in cells if _kept(runs_dir, cell))
        inputs = TrialInputs(source=source, train=train, train_bytes=Path(train.path).read_bytes(), dev=dev,
                             dev_bytes=Path(dev.path).read_bytes(), options=options, threads=cpus_per_trial,
                             done=done)
        trainable = tune.with_resources(tune.with_parameters(_trial, inputs=inputs), {"cpu": cpus_per_trial})
        lines = _Lines(log, dev.metric_names[0], len(cells), runs_dir,
                       keep=lambda trial: _keep(trial.checkpoint, runs_dir / _Lines.name(trial), files))
        experiment = f"{where.rstrip('/')}/{name}"
        space = {"cell": tune.grid_search([list(cell) for cell in cells])}  # one trial per pair, in grid order

        def restored(**errored):
            tuner = tune.Tuner.restore(experiment, trainable=trainable, param_space=space, **errored)
            tuner._local_tuner._run_config.callbacks = [lines.callback]  # callbacks are not restored
            return tuner

        started = time.perf_counter()
        if tune.Tuner.can_restore(experiment):
            log(f"ray: resuming the experiment in {experiment}")
            results = restored(resume_errored=True).fit()
            lost = [cell for cell in cells if _lost(results, runs_dir, cell)]
            if lost:  # Ray could not restore them (their last checkpoint was gone when the driver was killed)
                log(f"ray: {', '.join(ft.run_name(*cell) for cell in lost)}: could not be resumed; "
                    "restarting from the first epoch")
                lines.done = len(cells) - len(lost)
                results = restored(restart_errored=True).fit()
        else:
            log(f"ray: {len(cells)} trials, {cpus_per_trial} CPU{'s' * (cpus_per_trial != 1)} each; "
                f"checkpoints in {experiment}")
            results = tune.Tuner(
                trainable,
                param_space=space,
                run_config=tune.RunConfig(
                    name=name, storage_path=where, verbose=0, callbacks=[lines.callback],
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
            ).fit()
        log(f"ray: {len(cells)} trials in {time.perf_counter() - started:.0f} s")
        return _collect(results, cells, runs_dir, files)

    return run


def _kept(runs_dir: Path, cell) -> bool:
    return (runs_dir / ft.run_name(*cell) / SOURCE_RECORD).is_file()


def _lost(results, runs_dir: Path, cell) -> bool:
    """A trial that Ray ended in an error (not one the run reported) and whose model the driver does not hold."""
    if _kept(runs_dir, cell):
        return False
    return any(tuple(result.config["cell"]) == tuple(cell) and result.error is not None for result in results)


def _keep(checkpoint, run_dir: Path, files: dict) -> None:
    """A finished trial's model copied to run_dir (through a staging folder: run_dir is whole or absent)."""
    if (run_dir / SOURCE_RECORD).is_file():
        return
    staging = run_dir.with_name(f".{run_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    checkpoint.to_directory(str(staging))
    _record_files(staging, files)
    shutil.rmtree(run_dir, ignore_errors=True)
    staging.rename(run_dir)


def _collect(results, cells, runs_dir: Path, files: dict) -> list[dict]:
    """The trials in the grid's order, one entry each, a finished one with the path of its model."""
    by_cell = {}
    for result in results:
        cell = tuple(result.config["cell"])
        metrics = result.metrics or {}
        run_dir = runs_dir / ft.run_name(*cell)
        if metrics.get("status") == "ok" and (result.checkpoint is not None or _kept(runs_dir, cell)):
            if result.checkpoint is not None:
                _keep(result.checkpoint, run_dir, files)  # kept already, unless its callback did not run
            trial = {**json.loads(metrics["trial_json"]), "path": str(run_dir)}
        elif _kept(runs_dir, cell):  # finished by an earlier driver
            record = json.loads((run_dir / SOURCE_RECORD).read_text(encoding="utf-8"))["history"][-1]
            trial = {**ft.trial_entry(*cell, record), "path": str(run_dir), "resumed_after_epoch": 0}
        elif metrics.get("status") == "failed":
            trial = ft.trial_entry(*cell, error=metrics["error"])
        else:
            error = ft.one_line_error(result.error) if result.error else "the trial ended without a result"
            trial = ft.trial_entry(*cell, error=error)
        by_cell[cell] = trial
    return [by_cell.get(tuple(cell)) or ft.trial_entry(*cell, error="not run") for cell in cells]


def _record_files(model_dir: Path, files: dict) -> None:
    """The run's record names the task files the driver read, not the trial's copies of them."""
    path = model_dir / SOURCE_RECORD
    record = json.loads(path.read_text(encoding="utf-8"))
    record["history"][-1].update(files)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# The sweep's cells as Ray tasks


def _node() -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


def _version_error(version: str) -> str | None:
    from edgebert import __version__

    return None if version == __version__ else (f"the node runs edgebert {__version__}, the driver {version}: "
                                                "install the same on every node")


def _convert_on_node(source, tokenizer: bytes | None, mode: str, seq_len: int, name: str, cpus: int,
                     version: str) -> dict:
    """A Ray task: convert one (variant, mode) here; the bundle's files as a tar, or the one-line error."""
    from converters import sweep
    from converters.export import QuantizeMode
    from converters.pipeline import ConvertOptions, convert
    from converters.tf_import import tf

    node = _node()
    error = _version_error(version)
    if error:
        return {"error": error, "node": node}
    try:  # TensorFlow's own pools sized to what the task asked for (a reused worker has them already)
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    root = _scratch_dir("cell")
    try:
        if tokenizer is not None:  # a Hugging Face source's tokenizer.json, written here under its own name
            path = root / source.tokenizer_json.name
            path.write_bytes(tokenizer)
            source = dataclasses.replace(source, tokenizer_json=path)
        try:
            convert(source.path, root / name, ConvertOptions(quantize=QuantizeMode(mode), seq_len=seq_len, force=True),
                    source=source)
        except Exception as error:  # noqa: BLE001 - the cell's own failure: recorded, not retried
            return {"error": ft.one_line_error(error), "node": node}
        return {"bundle": sweep.pack_dir(root / name), "node": node}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        sweep._release_tensorflow_memory()


def _bench_on_node(converted: dict, name: str, threads: int, runs: int, warmup: int) -> dict:
    """A Ray task: measure one cell here, in a fresh process as a local sweep does, with this node's facts."""
    from converters import sweep
    from edgebert.bench import bench_in_fresh_process

    node = _node()
    if "error" in converted:
        return {"error": converted["error"], "node": converted["node"]}
    root = _scratch_dir("cell")
    try:
        sweep.unpack_dir(converted["bundle"], root / name)
        result = bench_in_fresh_process(root / name, threads=threads, runs=runs, warmup=warmup)
        if "error" not in result:
            result["device"] = sweep.measuring_device()
        return {"result": result, "node": node}
    finally:
        shutil.rmtree(root, ignore_errors=True)


class RayCells:
    """A sweep's cells (converters.sweep.run_sweep's `cells`) as Ray tasks on the connected cluster.

    Per (variant, mode), one task converts the bundle (unless the sweep directory holds a current one, which is
    sent instead); per thread count, one task measures it, asking Ray for max(threads, cpus_per_cell) CPUs.
    The source's weights and the bundles travel through Ray's object store: no node needs the driver's files.
    A task whose worker or node dies is retried by Ray (max_retries), on another node if need be; a cell whose
    retries run out is recorded as failed. `finished()` yields each result once, as it arrives; the driver
    writes the files. Cells placed on one node at the same time share its CPUs: for figures that compare,
    give --cpus-per-trial the nodes' CPU count so each node measures one cell at a time."""

    def __init__(self, cpus_per_cell: int | None = None, log: Log = print, max_retries: int = MAX_FAILURES):
        if cpus_per_cell is not None and cpus_per_cell < 1:
            raise UsageError(f"--cpus-per-trial must be at least 1, got {cpus_per_cell}")
        self.ray = import_ray()
        self.cpus_per_cell, self.log, self.max_retries = cpus_per_cell, log, max_retries
        self.pending: dict = {}  # ObjectRef -> ("bundle", group) or ("cell", PendingCell)
        self._options = {"max_retries": max_retries, "scheduling_strategy": "SPREAD"}
        self._convert, self._bench = self.ray.remote(_convert_on_node), self.ray.remote(_bench_on_node)

    def cpus(self, threads: int) -> int:
        return max(threads, self.cpus_per_cell or 1)

    def check(self, plan) -> None:
        """Refuse at once a cell no node can hold (Ray would wait for such a node forever)."""
        needed = max(self.cpus(threads) for threads in plan.threads)
        largest = max((int(node["Resources"].get("CPU", 0)) for node in self.ray.nodes() if node.get("Alive")),
                      default=0)
        if needed > largest:
            raise UsageError(f"a cell asks Ray for {needed} CPUs (its --threads, or --cpus-per-trial) but the "
                             f"largest node of the cluster has {largest}")

    def submit(self, source, groups, plan) -> None:
        """One variant's pending cells: groups of (mode, bundle_dir, bundle_is_current, [PendingCell])."""
        from converters import sweep
        from edgebert import __version__

        tokenizer = Path(source.tokenizer_json).read_bytes() if source.tokenizer_json else None
        source_ref = None
        for group in groups:
            mode, bundle_dir, current, cells = group
            if current:  # converted by an earlier run: the nodes measure that bundle
                converted = self.ray.put({"bundle": sweep.pack_dir(bundle_dir), "node": None})
            else:
                if source_ref is None:
                    source_ref = self.ray.put(source)
                cpus = self.cpus_per_cell or 1
                converted = self._convert.options(num_cpus=cpus, **self._options).remote(
                    source_ref, tokenizer, mode.value, plan.seq_len, bundle_dir.name, cpus, __version__)
                self.pending[converted] = ("bundle", group)
                self.log(f"{bundle_dir.name}: converting (Ray task)")
            for cell in cells:
                ref = self._bench.options(num_cpus=self.cpus(cell.threads), **self._options).remote(
                    converted, bundle_dir.name, cell.threads, plan.runs, plan.warmup)
                self.pending[ref] = ("cell", cell)

    def finished(self):
        """(kind, item, value) for each task as it ends: ("bundle", group, {"bundle"|"error", "node"}) or
        ("cell", PendingCell, {"result"|"error", "node"})."""
        while self.pending:
            (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
            kind, item = self.pending.pop(ref)
            try:
                value = self.ray.get(ref)
            except Exception as error:  # noqa: BLE001 - its worker or node died and Ray's retries ran out
                value = {"error": f"its Ray worker or node failed ({self.max_retries} retries): "
                                  f"{ft.one_line_error(error)}", "node": None}
            yield kind, item, value
