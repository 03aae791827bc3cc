"""Fine-tuning a BERT checkpoint on a GLUE-style task: the standard BERT recipe, knowledge distillation,
and magnitude pruning, with a checkpoint every epoch and resume after interruption.

The recipe is BERT's: AdamW (weight decay 0.01, none on biases and LayerNorms), a linear warm-up over
the first 10 % of steps then a linear decay to zero, gradient clipping at norm 1, dropout 0.1, 4 epochs.
The BERT Miniatures release searched batch sizes {8, 16, 32, 64, 128} and learning rates
{3e-4, 1e-4, 5e-5, 3e-5}; `search()` runs any part of that grid and keeps the best dev score.

Distillation (the miniatures were trained for it): the loss mixes cross-entropy on the labels with
T^2 * KL(teacher || student) on logits softened by a temperature T (Hinton et al. 2015). The teacher
is a classifier checkpoint (e.g. a bigger model fine-tuned with this tool) run once over the training
set, or an .npy file of its logits, one row per training example.

Early stopping: after each epoch the model is scored on the dev set with the task's main metric
(accuracy, F1 or Matthews correlation); the best epoch is the output, and training stops after
`patience` epochs without improvement. While magnitude pruning is still raising the sparsity, an epoch
cannot be the best: only epochs after the schedule's end carry the target sparsity.

Resume: the work directory holds the last epoch's model and optimizer state (tf.train.Checkpoint),
the best epoch's weights and a state file; rerunning the same command continues after the last
finished epoch. Shuffling is seeded per epoch, so a resumed run sees the same batches.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from converters import google_checkpoint, hf_checkpoint, pruning
from converters.pruning import PruningSpec
from converters.sources import Source, load_source
from edgebert import tokenizer as tokenization
from edgebert.bundle import file_sha256
from edgebert.errors import SourceError, UsageError
from edgebert.tasks import TaskData, metrics

MINIATURES_BATCH_SIZES = (8, 16, 32, 64, 128)
MINIATURES_LEARNING_RATES = (3e-4, 1e-4, 5e-5, 3e-5)
STATE_FILE = "state.json"
BEST_WEIGHTS = "best_weights.npz"
TEACHER_LOGITS = "teacher_logits.npy"
STATE_VERSION = 1
NO_DECAY = ("bias", "gamma", "beta", "layer_norm")  # BERT's AdamW skips weight decay on these


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup: float = 0.1  # fraction of all steps
    weight_decay: float = 0.01
    dropout: float = 0.1
    max_seq_len: int = 128
    patience: int = 2  # epochs without dev improvement before stopping
    seed: int = 0
    max_train_examples: int | None = None  # a quick run on the first N shuffled examples
    teacher: Path | None = None  # classifier checkpoint, or .npy logits [train examples, labels]
    temperature: float = 2.0
    distill_weight: float = 0.5  # weight of the soft (teacher) loss; 1 - it on the labels
    pruning: PruningSpec | None = None
    new_head: bool = False  # replace a classifier head of another task
    eval_batch_size: int = 128

    def __post_init__(self):
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "max_seq_len": self.max_seq_len,
                    "eval_batch_size": self.eval_batch_size, "patience": self.patience}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise UsageError(f"learning rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup < 1 or not 0 <= self.dropout < 1 or self.weight_decay < 0:
            raise UsageError("warm-up and dropout must be fractions in [0, 1), weight decay non-negative")
        if not 0 <= self.distill_weight <= 1 or self.temperature <= 0:
            raise UsageError("distill weight must be in [0, 1] and temperature positive")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise UsageError("max-train-examples must be at least 1")
        if not 3 <= self.max_seq_len <= tokenization.MAX_LENGTH:
            raise UsageError(f"max-seq-len must be from 3 to {tokenization.MAX_LENGTH}, got {self.max_seq_len}")

    def fingerprint(self) -> dict:
        """What a resumed run must share with the interrupted one, as JSON would give it back."""
        values = {name: value for name, value in dataclasses.asdict(self).items() if name != "eval_batch_size"}
        values["teacher"] = str(self.teacher) if self.teacher else None
        values["pruning"] = self.pruning.to_dict() if self.pruning else None
        return json.loads(json.dumps(values))


@dataclass
class Progress:
    """What the trainer reports while it runs; the CLI draws it."""

    on_epoch_start: Callable[[int, int, int], None] = lambda epoch, epochs, steps: None
    on_step: Callable[[int, float], None] = lambda step, loss: None
    on_epoch_end: Callable[[dict], None] = lambda record: None
    log: Callable[[str], None] = lambda message: None


@dataclass
class FinetuneResult:
    out_dir: Path
    record: dict
    best_metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Data


@dataclass
class EncodedTask:
    """A task tokenized once at max_seq_len; batches are cut to their longest row."""

    input_ids: np.ndarray  # (N, S) int32
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray  # (N,) int32
    lengths: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        width = int(self.lengths[rows].max())
        return {"input_ids": self.input_ids[rows, :width], "attention_mask": self.attention_mask[rows, :width],
                "token_type_ids": self.token_type_ids[rows, :width]}


def encode_task(source: Source, task: TaskData, seq_len: int) -> EncodedTask:
    from converters.pipeline import bundle_tokenizer

    if task.labels is None:
        raise UsageError("has no labels (a test file?); fine-tuning needs labelled data", task.path)
    tokenizer = bundle_tokenizer(source, seq_len)
    encoded = tokenization.encode(tokenizer, task.texts, seq_len)
    return EncodedTask(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"],
                       np.asarray(task.labels, np.int32), encoded["attention_mask"].sum(1))


def training_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort each window of 50 batches by length, cut it into
    batches, shuffle the batches. Each batch is padded only to its own longest row, so this cuts the
    padded tokens (and the time) about threefold on SST-2 while keeping the batches random."""
    order = rng.permutation(len(lengths))
    window = 50 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _length_sorted_batches(data: EncodedTask, size: int) -> list[np.ndarray]:
    """Inference batches of similar lengths, so little time goes to padding."""
    order = np.argsort(data.lengths, kind="stable")
    return [order[i:i + size] for i in range(0, len(order), size)]


def predict_logits(model, data: EncodedTask, batch_size: int) -> np.ndarray:
    logits = np.zeros((len(data), model.output_shape["logits"][-1]), np.float32)
    for rows in _length_sorted_batches(data, batch_size):
        logits[rows] = model(data.batch(rows), training=False)["logits"].numpy()
    return logits


def predict_labels(source: Source, texts: Sequence, seq_len: int = 128, batch_size: int = 256,
                   model=None) -> np.ndarray:
    """The float classifier's predicted label of each text (str, or (str, str) pairs), tokenized with
    the source's own vocab at seq_len: what `vocab_trim.trim_keeping_predictions` compares. `model` is
    the source's Keras classifier when the caller has built it already (`classifier_model`)."""
    from converters.pipeline import bundle_tokenizer

    model = model or classifier_model(source)
    tokenizer = bundle_tokenizer(source, seq_len)
    labels = np.zeros(len(texts), np.int64)
    # The tokenizer takes single sentences or pairs, not a mix: a corpus may hold both.
    for is_pair in (False, True):
        rows = [i for i, text in enumerate(texts) if isinstance(text, tuple) == is_pair]
        if rows:
            encoded = tokenization.encode(tokenizer, [texts[i] for i in rows], seq_len)
            data = EncodedTask(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"],
                               np.zeros(len(rows), np.int32), encoded["attention_mask"].sum(1))
            labels[rows] = predict_logits(model, data, batch_size).argmax(-1)
    return labels


def classifier_model(source: Source):
    """The source's float Keras classifier; a UsageError naming the source when it has no head."""
    from converters.model import build_bert, set_google_weights

    if not source.num_labels:
        raise UsageError("has no classifier head: predictions need a fine-tuned classifier "
                         "(edgebert finetune makes one)", source.path)
    model = build_bert(source.config, None, source.num_labels)
    set_google_weights(model, source.config, source.weights, source.num_labels, str(source.path))
    return model


def label_predictor(seq_len: int = 128) -> Callable[[Source, Sequence], np.ndarray]:
    """predict_labels for `vocab_trim.trim_keeping_predictions`, which asks about the original source
    every round: its Keras model is built once and kept (by sha256), a trimmed source's each time."""
    models: dict[str, object] = {}

    def predict(source: Source, texts: Sequence) -> np.ndarray:
        if not models:
            models[source.sha256] = classifier_model(source)  # the first call is the original's
        return predict_labels(source, texts, seq_len, model=models.get(source.sha256))
    return predict


def score(model, data: EncodedTask, task: TaskData, batch_size: int) -> dict[str, float]:
    return metrics(task, data.labels, predict_logits(model, data, batch_size).argmax(-1))


# ---------------------------------------------------------------------------------------------------
# The model, the optimizer and one training step


def _warmup_linear_decay(peak: float, warmup_steps: int, total_steps: int):
    from converters.tf_import import tf, tf_keras

    class WarmupLinearDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = step / max(warmup_steps, 1)
            decay = (total_steps - step) / max(total_steps - warmup_steps, 1)
            return peak * tf.maximum(0.0, tf.minimum(warm, decay))

        def get_config(self):
            return {"peak": peak, "warmup_steps": warmup_steps, "total_steps": total_steps}

    return WarmupLinearDecay()


def classifier_weights(source: Source, num_labels: int, new_head: bool, seed: int) -> dict[str, np.ndarray]:
    """The source's weights with a classifier for the task: its own head when the label count fits,
    else a fresh one (initialized as BERT's run_classifier does, normal with std 0.02)."""
    weights = dict(source.weights)
    has = source.num_labels
    if has and has != num_labels and not new_head:
        raise UsageError(f"has a classifier head for {has} labels but the task has {num_labels} "
                         "(pass --new-head to replace it)", source.path)
    if not has or has != num_labels or new_head:
        rng = np.random.default_rng(seed)
        weights[google_checkpoint.CLASSIFIER_WEIGHTS] = (
            0.02 * rng.standard_normal((num_labels, source.config.hidden_size))).astype(np.float32)
        weights[google_checkpoint.CLASSIFIER_BIAS] = np.zeros(num_labels, np.float32)
    return weights


def _optimizer(options: FinetuneOptions, total_steps: int):
    from converters.tf_import import tf_keras

    schedule = _warmup_linear_decay(options.learning_rate, int(options.warmup * total_steps), total_steps)
    optimizer = tf_keras.optimizers.AdamW(learning_rate=schedule, weight_decay=options.weight_decay,
                                          beta_1=0.9, beta_2=0.999, epsilon=1e-6, jit_compile=False)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer


def _train_step(model, optimizer, options: FinetuneOptions, distilling: bool):
    """One compiled step for any batch size and length. The loss is the mean cross-entropy, mixed with
    the teacher's softened distribution when distilling."""
    from converters.tf_import import tf

    spec = tf.TensorSpec([None, None], tf.int32)
    soft_weight = options.distill_weight if distilling else 0.0
    temperature = options.temperature

    @tf.function(input_signature=[spec, spec, spec, tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, None], tf.float32)])
    def step(input_ids, attention_mask, token_type_ids, labels, teacher_logits):
        with tf.GradientTape() as tape:
            logits = model({"input_ids": input_ids, "attention_mask": attention_mask,
                            "token_type_ids": token_type_ids}, training=True)["logits"]
            hard = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            loss = (1.0 - soft_weight) * hard
            if soft_weight:
                loss += soft_weight * temperature ** 2 * distillation_loss(logits, teacher_logits, temperature)
        variables = model.trainable_variables
        gradients, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), 1.0)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    return step


def distillation_loss(student_logits, teacher_logits, temperature: float):
    """Mean KL(teacher || student) of the temperature-softened distributions (a tf scalar)."""
    from converters.tf_import import tf

    teacher = tf.nn.softmax(teacher_logits / temperature, axis=-1)
    log_student = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    log_teacher = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    return tf.reduce_mean(tf.reduce_sum(teacher * (log_teacher - log_student), axis=-1))


def teacher_logits(options: FinetuneOptions, task: TaskData, work_dir: Path,
                   log: Callable[[str], None]) -> np.ndarray:
    """[examples in the training file, labels] logits of the teacher, computed once (cached in the work
    directory)."""
    path = Path(options.teacher)
    cached = work_dir / TEACHER_LOGITS
    if cached.is_file():
        return np.load(cached)
    if path.suffix == ".npy":
        try:
            logits = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise SourceError(f"not a readable .npy array ({error})", path) from None
        if logits.shape != (len(task), task.num_labels) or not np.all(np.isfinite(logits)):
            raise SourceError(f"teacher logits have shape {list(logits.shape)}; the training file needs "
                              f"[{len(task)}, {task.num_labels}] finite values", path)
    else:
        from converters.model import build_bert, set_google_weights

        teacher = load_source(path)
        if teacher.num_labels != task.num_labels:
            raise UsageError(f"the teacher must be a classifier for the task's {task.num_labels} labels "
                             f"(it has {teacher.num_labels}); fine-tune it first", path)
        log(f"running the teacher ({teacher.config.num_layers} layers, hidden {teacher.config.hidden_size}) "
            f"over {len(task):,} training examples")
        model = build_bert(teacher.config, None, teacher.num_labels)
        set_google_weights(model, teacher.config, teacher.weights, teacher.num_labels, str(path))
        # The teacher tokenizes with its own vocab.
        logits = predict_logits(model, encode_task(teacher, task, options.max_seq_len), options.eval_batch_size)
    logits = logits.astype(np.float32)
    _atomic_save_npy(cached, logits)
    return logits


def _subset(total: int, options: FinetuneOptions) -> np.ndarray:
    if options.max_train_examples is None or options.max_train_examples >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(options.seed).permutation(total)[: options.max_train_examples])


# ---------------------------------------------------------------------------------------------------
# Work directory: state, last checkpoint, best weights


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, array)
    os.replace(partial, path)


def _atomic_write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _read_state(work_dir: Path) -> dict | None:
    path = work_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SourceError(f"unreadable fine-tuning state ({error}); delete the work directory to start over",
                          path) from None


def _run_identity(source: Source, train_path: Path, dev_path: Path | None, options: FinetuneOptions) -> dict:
    return {"version": STATE_VERSION, "source_sha256": source.sha256, "train_sha256": file_sha256(train_path),
            "dev_sha256": file_sha256(dev_path) if dev_path else None, "options": options.fingerprint()}


# ---------------------------------------------------------------------------------------------------
# The whole run


def finetune(source: Source, train: TaskData, dev: TaskData | None, out_dir: Path,
             options: FinetuneOptions = FinetuneOptions(), *, work_dir: Path | None = None,
             progress: Progress = Progress(), force: bool = False, restart: bool = False) -> FinetuneResult:
    """Fine-tune `source` on `train`, choose the best epoch on `dev` (the last epoch without one), and
    write it to out_dir as a classifier checkpoint that `edgebert convert` reads, in the source's format
    (Hugging Face's for a Hugging Face source, else Google's layout; converters/hf_checkpoint.py). Whether
    it can be written is checked before anything is trained."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    # The output first: a run must never train for minutes and then fail to write.
    output = hf_checkpoint.prepare_output(source, out_dir, force=force)
    from converters.model import build_bert, set_google_weights
    from converters.tf_import import tf, tf_keras

    work_dir = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    if dev is not None and dev.labels is None:
        raise UsageError("the dev file has no labels; early stopping needs labelled data", dev.path)
    if dev is not None and dev.num_labels != train.num_labels:
        raise UsageError(f"the dev file has {dev.num_labels} labels, the training file {train.num_labels}", dev.path)
    num_labels, log = train.num_labels, progress.log
    identity = _run_identity(source, train.path, dev.path if dev else None, options)
    state = None if restart else _read_state(work_dir)
    if state is not None and state.get("identity") != identity:
        raise UsageError("holds a run with other options, data or source; rerun with the same ones, or pass "
                         "--restart to start over", work_dir)
    if state is None:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        state = {"identity": identity, "epochs_done": 0, "epochs": [], "best": None, "stopped_early": False}

    weights = classifier_weights(source, num_labels, options.new_head, options.seed)
    subset = _subset(len(train), options)
    soft = teacher_logits(options, train, work_dir, log)[subset] if options.teacher else None
    log(f"tokenizing {len(train):,} training examples" + (f" and {len(dev):,} dev examples" if dev else ""))
    train_data = encode_task(source, train, options.max_seq_len)
    train_data = EncodedTask(*(array[subset] for array in dataclasses.astuple(train_data)))
    dev_data = encode_task(source, dev, options.max_seq_len) if dev else None

    steps_per_epoch = math.ceil(len(train_data) / options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    schedule = pruning.schedule_for(options.pruning, total_steps) if options.pruning else None

    tf_keras.utils.set_random_seed(options.seed)
    model = build_bert(source.config, None, num_labels, dropout=options.dropout)
    set_google_weights(model, source.config, weights, num_labels, str(source.path))
    if schedule:
        log(f"pruning the encoder's dense kernels to {options.pruning.describe()} sparsity: steps "
            f"{schedule.begin_step}-{schedule.end_step} of {total_steps}, every {schedule.frequency}")
        model = pruning.wrap_for_pruning(model, source.config, options.pruning, schedule)
    optimizer = _optimizer(options, total_steps)
    step = _train_step(model, optimizer, options, distilling=soft is not None)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(work_dir / "last"), max_to_keep=1)
    if state["epochs_done"]:
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
        log(f"resuming after epoch {state['epochs_done']} of {options.epochs}")
    pruning_steps = _pruning_step_callback(model) if schedule else None

    main_metric = dev.metric_names[0] if dev else None
    for epoch in range(state["epochs_done"] + 1, options.epochs + 1):
        if state["stopped_early"]:
            break
        batches = training_batches(train_data.lengths, options.batch_size,
                                   np.random.default_rng([options.seed, epoch]))
        progress.on_epoch_start(epoch, options.epochs, steps_per_epoch)
        epoch_started, losses = time.perf_counter(), []
        for index, rows in enumerate(batches):
            if pruning_steps:
                pruning_steps.on_train_batch_begin(batch=-1)
            teacher = soft[rows] if soft is not None else np.zeros((len(rows), num_labels), np.float32)
            batch = train_data.batch(rows)
            loss = float(step(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                              train_data.labels[rows], teacher))
            if not math.isfinite(loss):
                raise UsageError(f"the training loss became {loss} at epoch {epoch}, step {index + 1}; "
                                 "try a smaller learning rate")
            losses.append(loss)
            progress.on_step(index + 1, loss)
        if pruning_steps:
            pruning_steps.on_epoch_end(batch=-1)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                  "seconds": round(time.perf_counter() - epoch_started, 1)}
        epoch_weights = _plain_weights(model, source.config, num_labels, pruned=bool(schedule))
        eligible = not schedule or (epoch * steps_per_epoch - 1) >= schedule.end_step
        if schedule:
            record["sparsity"] = pruning.measure_sparsity(epoch_weights, source.config)["overall"]
        if dev_data is not None:
            record["dev"] = score(model, dev_data, dev, options.eval_batch_size)
        best = state["best"]
        improved = eligible and (best is None or dev_data is None
                                 or record["dev"][main_metric] > best["dev"][main_metric])
        record["best"] = improved
        if improved:
            np.savez(work_dir / (BEST_WEIGHTS + ".partial.npz"), **_npz_names(epoch_weights))
            os.replace(work_dir / (BEST_WEIGHTS + ".partial.npz"), work_dir / BEST_WEIGHTS)
            state["best"] = {"epoch": epoch, "dev": record.get("dev", {})}
        elif eligible and dev_data is not None and epoch - state["best"]["epoch"] >= options.patience:
            state["stopped_early"] = True
        manager.save()
        state["epochs"].append(record)
        state["epochs_done"] = epoch
        _atomic_write_json(work_dir / STATE_FILE, state)
        progress.on_epoch_end(record)

    best_weights = _load_npz(work_dir / BEST_WEIGHTS)
    result_record = {
        "step": "finetune",
        "task": train.task, "train_file": str(train.path), "train_sha256": identity["train_sha256"],
        "dev_file": str(dev.path) if dev else None, "dev_sha256": identity["dev_sha256"],
        "train_examples": len(train_data), "labels": list(train.label_names),
        "options": options.fingerprint(),
        "steps_per_epoch": steps_per_epoch,
        "epochs": state["epochs"], "best_epoch": state["best"]["epoch"], "stopped_early": state["stopped_early"],
        "dev_metrics": state["best"]["dev"],
        "distillation": ({"teacher": str(options.teacher), "temperature": options.temperature,
                          "distill_weight": options.distill_weight} if options.teacher else None),
        "pruning": None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if schedule:
        result_record["pruning"] = {"spec": options.pruning.to_dict(), "schedule": dataclasses.asdict(schedule),
                                    "measured": pruning.check_sparsity(best_weights, source.config, options.pruning)}
    history = source.history + [result_record]
    output.write(source.config, best_weights,
                 record={"lowercase": source.lowercase, "labels": list(train.label_names),
                         "random_init": source.random_weights, "max_word_chars": source.max_word_chars,
                         "history": history})
    shutil.rmtree(work_dir, ignore_errors=True)
    return FinetuneResult(out_dir, result_record, state["best"]["dev"])


def _pruning_step_callback(model):
    """tfmot's step counter, driven by hand in this custom loop (as tfmot documents for custom loops)."""
    import tensorflow_model_optimization as tfmot

    callback = tfmot.sparsity.keras.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    return callback


def _plain_weights(model, config, num_labels, *, pruned: bool) -> dict[str, np.ndarray]:
    """Google-named weights; a pruned model is stripped of its wrappers first (masks applied)."""
    from converters.model import get_google_weights

    return get_google_weights(pruning.strip(model) if pruned else model, config, num_labels)


def _npz_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name.replace("/", "|"): value for name, value in weights.items()}  # npz keys cannot hold "/"


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {name.replace("|", "/"): stored[name] for name in stored.files}


# ---------------------------------------------------------------------------------------------------
# The Miniatures' grid


def grid(batch_sizes: list[int], learning_rates: list[float]) -> list[tuple[int, float]]:
    return [(b, lr) for b in batch_sizes for lr in learning_rates]


def run_name(batch_size: int, learning_rate: float) -> str:
    return f"bs{batch_size}-lr{learning_rate:g}"


SEARCH_FILE = "search.json"  # in OUT.search: the inputs every run of the search shares


class ChangedInputsError(UsageError):
    """A search directory that holds runs over other inputs: resuming would mix old results with new."""


def search_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".search")


def search_identity(source: Source, train: TaskData, dev: TaskData, options: FinetuneOptions) -> dict:
    """What every run of a search shares: the source, the data and the options other than the grid's two
    (a search may grow by more batch sizes or learning rates; each run is named by its pair)."""
    shared = {name: value for name, value in options.fingerprint().items()
              if name not in ("batch_size", "learning_rate")}
    return {"version": STATE_VERSION, "source_sha256": source.sha256, "train_sha256": file_sha256(train.path),
            "dev_sha256": file_sha256(dev.path), "options": shared}


def identity_key(identity: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _changed(old: dict, new: dict) -> str:
    names = {"source_sha256": "the source", "train_sha256": "the training file", "dev_sha256": "the dev file",
             "version": "the state version"}
    changed = [label for key, label in names.items() if old.get(key) != new.get(key)]
    old_options, new_options = old.get("options") or {}, new.get("options") or {}
    options = sorted(k for k in set(old_options) | set(new_options) if old_options.get(k) != new_options.get(k))
    if options:
        changed.append("options " + ", ".join(name.replace("_", "-") for name in options))
    return "; ".join(changed) or "its inputs"


def claim_search_dir(runs_dir: Path, identity: dict, restart: bool = False) -> None:
    """Make runs_dir the home of this search: a new one is created with its identity; one that holds a
    search over other inputs is refused (its finished runs must not mix with these), unless restart."""
    runs_dir = Path(runs_dir)
    if restart:
        shutil.rmtree(runs_dir, ignore_errors=True)
    path = runs_dir / SEARCH_FILE
    if path.is_file():
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SourceError(f"unreadable search state ({error}); pass --restart to start over", path) from None
        if held != identity:
            raise ChangedInputsError(f"holds a search with other inputs ({_changed(held, identity)} changed); rerun with "
                             "the same ones, or pass --restart to start over", runs_dir)
        return
    if runs_dir.is_dir() and any(runs_dir.iterdir()):
        raise ChangedInputsError("holds runs of an earlier search whose inputs are not recorded; pass --restart to start "
                         "over", runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(path, identity)


def trial_entry(batch_size: int, learning_rate: float, record: dict | None = None, error: str | None = None) -> dict:
    """One run of a search, the same whether it ran here or on a Ray cluster."""
    entry = {"run": run_name(batch_size, learning_rate), "batch_size": batch_size, "learning_rate": learning_rate}
    if record is None:
        return {**entry, "status": "failed", "error": error}
    return {**entry, "status": "ok", "dev_metrics": record["dev_metrics"], "best_epoch": record["best_epoch"],
            "epochs_run": len(record["epochs"]), "stopped_early": record["stopped_early"],
            "seconds": record["seconds"]}


def one_line_error(error: BaseException) -> str:
    from edgebert.errors import EdgebertError

    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, EdgebertError) else f"{type(error).__name__}: {text}"


def run_trials_here(source: Source, train: TaskData, dev: TaskData, runs_dir: Path, options: FinetuneOptions,
                    cells: list[tuple[int, float]], progress: Progress) -> list[dict]:
    """The search's runs one after another on this machine, each into runs_dir/<run>/ (a finished run is
    kept and not redone). A run that fails is recorded with its error and the search goes on."""
    from edgebert.errors import OutputError

    trials = []
    for batch_size, learning_rate in cells:
        run_dir = Path(runs_dir) / run_name(batch_size, learning_rate)
        run_options = dataclasses.replace(options, batch_size=batch_size, learning_rate=learning_rate)
        if (run_dir / google_checkpoint.SOURCE_RECORD).is_file():
            record, resumed = google_checkpoint.read_source_record(run_dir)["history"][-1], 0
            progress.log(f"{run_dir.name}: done before, dev {_main_score(record, dev)}")
        else:
            progress.log(f"{run_dir.name}: fine-tuning")
            resumed = (_read_state(run_dir.with_name(run_dir.name + ".work")) or {}).get("epochs_done", 0)
            try:
                record = finetune(source, train, dev, run_dir, run_options, progress=progress).record
            except OutputError:  # the disk: every later run would fail the same way
                raise
            except Exception as error:  # noqa: BLE001 - a run that fails is recorded; the search goes on
                progress.log(f"{run_dir.name}: failed: {one_line_error(error)}")
                trials.append(trial_entry(batch_size, learning_rate, error=one_line_error(error)))
                continue
        trials.append({**trial_entry(batch_size, learning_rate, record), "path": str(run_dir),
                       "resumed_after_epoch": resumed})
    return trials


def _main_score(record: dict, dev: TaskData) -> str:
    name = dev.metric_names[0]
    return f"{name} {record['dev_metrics'][name]:.4f}"


def best_trial(trials: list[dict], dev: TaskData) -> dict:
    """The finished run with the best main dev metric (the first of equals, in grid order)."""
    main_metric = dev.metric_names[0]
    finished = [trial for trial in trials if trial["status"] == "ok"]
    if not finished:
        errors = "; ".join(f"{t['run']}: {t['error']}" for t in trials[:3])
        raise UsageError(f"every run of the search failed ({errors})")
    return max(finished, key=lambda trial: trial["dev_metrics"][main_metric])


def search(source: Source, train: TaskData, dev: TaskData, out_dir: Path, options: FinetuneOptions,
           batch_sizes: list[int], learning_rates: list[float], *, progress: Progress = Progress(),
           force: bool = False, restart: bool = False, run_trials=None) -> FinetuneResult:
    """Fine-tune once per (batch size, learning rate), each into out_dir.search/<run>/ (finished runs are
    kept, so an interrupted search resumes), and write the best on the dev set to out_dir.

    `run_trials(source, train, dev, runs_dir, options, cells, progress) -> trials` runs them: on this
    machine, one after another, by default; converters.distributed runs them on a Ray cluster. A run that
    fails is recorded with its error; a search over other inputs in out_dir.search is refused."""
    if dev is None:
        raise UsageError("a hyper-parameter search needs --dev to compare the runs on")
    out_dir = Path(out_dir)
    hf_checkpoint.prepare_output(source, out_dir, force=force)  # before any run: the best is copied there
    runs_dir = search_dir(out_dir)
    claim_search_dir(runs_dir, search_identity(source, train, dev, options), restart)
    trials = (run_trials or run_trials_here)(source, train, dev, runs_dir, options,
                                             grid(batch_sizes, learning_rates), progress)
    return write_best(out_dir, trials, dev, progress)


def write_best(out_dir: Path, trials: list[dict], dev: TaskData, progress: Progress = Progress()) -> FinetuneResult:
    """Copy the best run (trial["path"], a finished checkpoint) to out_dir, its record listing every run."""
    main_metric = dev.metric_names[0]
    best = best_trial(trials, dev)
    best_dir = Path(best["path"])
    progress.log(f"best: {best['run']} (dev {main_metric} {best['dev_metrics'][main_metric]:.4f})")
    record = google_checkpoint.read_source_record(best_dir)
    record["history"][-1]["search"] = [
        {"run": t["run"], **({main_metric: t["dev_metrics"][main_metric]} if t["status"] == "ok" else {}),
         **{name: value for name, value in t.items() if name not in ("run", "path")}} for t in trials]
    staging = out_dir.with_name(f".{out_dir.name}.tmp-search")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best_dir, staging)
    (staging / google_checkpoint.SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return FinetuneResult(out_dir, record["history"][-1], best["dev_metrics"])
