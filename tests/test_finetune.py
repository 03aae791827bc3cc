"""Fine-tuning, distillation and magnitude pruning on a tiny model and a tiny task built here."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from cli_helpers import error_line, invoke


def _write_task(path, n, seed, header="sentence\tlabel"):
    """A separable two-class task over words of the synthetic vocab: class 1 uses one half of the
    words, class 0 the other, so a model that learns anything scores well."""
    from converters.vocab import synthetic_vocab

    words = [w for w in synthetic_vocab(None) if w.isalpha() and len(w) > 2][:40]
    rng = random.Random(seed)
    lines = [header]
    for _ in range(n):
        label = rng.randint(0, 1)
        pool = words[:20] if label else words[20:]
        lines.append(" ".join(rng.choice(pool) for _ in range(rng.randint(3, 8))) + f"\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return _write_task(root / "train.tsv", 320, 0), _write_task(root / "dev.tsv", 80, 1)


def _run(source_dir, train, dev, out, **options):
    from converters.finetune import FinetuneOptions, Progress, finetune
    from converters.sources import load_source
    from edgebert.tasks import load_task

    defaults = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3}
    logs = []
    result = finetune(load_source(source_dir), load_task(train), load_task(dev) if dev else None, out,
                      FinetuneOptions(**{**defaults, **options}), progress=Progress(log=logs.append))
    return result, logs


@pytest.fixture(scope="module")
def finetuned(tiny_checkpoint, task_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "tiny-ft"
    result, _ = _run(tiny_checkpoint, *task_files, out, epochs=3)
    return out, result


def test_finetune_learns_and_writes_a_classifier_checkpoint(finetuned):
    from converters.sources import load_source

    out, result = finetuned
    assert result.best_metrics["accuracy"] >= 0.9  # the task is separable; a random head scores ~0.5
    source = load_source(out)
    assert source.num_labels == 2 and source.labels == ["negative", "positive"]
    record = source.history[-1]
    assert record["step"] == "finetune" and record["task"] == "SST-2"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    assert record["dev_metrics"] == result.best_metrics
    assert not out.with_name(out.name + ".work").exists()  # the work directory goes once the output is written
    # A Google source stays in Google's layout; the record keeps the tokenizer's word-length limit.
    assert (out / "bert_config.json").is_file() and not (out / "config.json").exists()
    assert json.loads((out / "edgebert_source.json").read_text())["max_word_chars"] == source.max_word_chars == 200


def test_finetuned_checkpoint_converts_to_a_classifier_bundle(finetuned, tmp_path):
    from converters.pipeline import ConvertOptions, convert

    out, result = finetuned
    manifest = convert(out, tmp_path / "bundle", ConvertOptions(seq_len=16, validation_size=4)).manifest
    assert manifest["head"] == "classifier" and manifest["labels"] == ["negative", "positive"]
    assert manifest["source"]["history"][-1]["dev_metrics"] == result.best_metrics
    assert manifest["source"]["random_weights"] is True  # trained, but from a random initialization


def test_resume_after_interruption_gives_the_uninterrupted_result(tiny_checkpoint, task_files, tmp_path):
    from converters.finetune import FinetuneOptions, Progress, finetune
    from converters.sources import load_source
    from edgebert.tasks import load_task

    # Without dropout the run is deterministic, so the resumed result must equal the straight one.
    straight, _ = _run(tiny_checkpoint, *task_files, tmp_path / "straight", epochs=3, dropout=0.0)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    options = FinetuneOptions(epochs=3, batch_size=16, learning_rate=1e-3, dropout=0.0)
    source, train, dev = load_source(tiny_checkpoint), load_task(task_files[0]), load_task(task_files[1])
    with pytest.raises(KeyboardInterrupt):
        finetune(source, train, dev, tmp_path / "resumed", options, progress=Progress(on_epoch_end=stop_after_first))
    assert json.loads((tmp_path / "resumed.work" / "state.json").read_text())["epochs_done"] == 1
    logs = []
    resumed = finetune(source, train, dev, tmp_path / "resumed", options, progress=Progress(log=logs.append))
    assert "resuming after epoch 1 of 3" in logs
    untimed = lambda epochs: [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]  # noqa: E731
    assert untimed(resumed.record["epochs"]) == untimed(straight.record["epochs"])
    a, b = load_source(tmp_path / "straight").weights, load_source(tmp_path / "resumed").weights
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)


def test_resume_refuses_a_work_directory_made_with_other_options(tiny_checkpoint, task_files, tmp_path):
    def stop(record):
        raise KeyboardInterrupt

    from converters.finetune import FinetuneOptions, Progress, finetune
    from converters.sources import load_source
    from edgebert.tasks import load_task

    source, train = load_source(tiny_checkpoint), load_task(task_files[0])
    with pytest.raises(KeyboardInterrupt):
        finetune(source, train, None, tmp_path / "out", FinetuneOptions(epochs=2, batch_size=16),
                 progress=Progress(on_epoch_end=stop))
    result = invoke("finetune", tiny_checkpoint, "--task", task_files[0], "--out", tmp_path / "out",
                    "--epochs", 2, "--batch-size", 32)
    line = error_line(result, 2, progress=(f"reading {tiny_checkpoint}",))
    assert "out.work: holds a run with other options" in line and "--restart" in line


def _student_logits(source_dir, train_file):
    from converters.finetune import classifier_weights, encode_task, predict_logits
    from converters.model import build_bert, set_google_weights
    from converters.sources import load_source
    from edgebert.tasks import load_task

    source = load_source(source_dir)
    model = build_bert(source.config, None, 2)
    set_google_weights(model, source.config, classifier_weights(source, 2, False, 0), 2)
    return predict_logits(model, encode_task(source, load_task(train_file), 64), 64)


def test_distillation_lowers_the_loss_against_the_teacher(tiny_checkpoint, task_files, tmp_path):
    from converters.finetune import distillation_loss
    from edgebert.tasks import load_task

    # A confident teacher given as a logits file: +3 for the true label, -3 for the other.
    labels = np.array(load_task(task_files[0]).labels)
    teacher = np.where(np.eye(2)[labels] > 0, 3.0, -3.0).astype(np.float32)
    np.save(tmp_path / "teacher.npy", teacher)
    kl = lambda student: float(distillation_loss(student, teacher, 2.0))  # noqa: E731

    before = kl(_student_logits(tiny_checkpoint, task_files[0]))
    result, _ = _run(tiny_checkpoint, task_files[0], None, tmp_path / "student", epochs=4, learning_rate=3e-3,
                     teacher=tmp_path / "teacher.npy", distill_weight=1.0)
    after = kl(_student_logits(tmp_path / "student", task_files[0]))
    assert after < 0.5 * before, (before, after)
    assert result.record["distillation"] == {"teacher": str(tmp_path / "teacher.npy"), "temperature": 2.0,
                                             "distill_weight": 1.0}


def test_distillation_from_a_fine_tuned_teacher_checkpoint(finetuned, tiny_checkpoint, task_files, tmp_path):
    teacher_dir, _ = finetuned
    result, logs = _run(tiny_checkpoint, task_files[0], None, tmp_path / "student", epochs=1,
                        teacher=teacher_dir, distill_weight=0.5)
    assert any(line.startswith("running the teacher (2 layers, hidden 32)") for line in logs)
    assert result.record["distillation"]["teacher"] == str(teacher_dir)


def test_distillation_from_a_logits_file_checks_its_shape(tiny_checkpoint, task_files, tmp_path):
    bad = tmp_path / "logits.npy"
    np.save(bad, np.zeros((3, 2), np.float32))
    result = invoke("finetune", tiny_checkpoint, "--task", task_files[0], "--out", tmp_path / "out",
                    "--teacher", bad)
    line = error_line(result, 1, progress=(f"reading {tiny_checkpoint}",))
    assert line == f"error: {bad}: teacher logits have shape [3, 2]; the training file needs [320, 2] finite values"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pattern, sparsity, expected", [("unstructured", 0.8, 0.8), ("2:4", None, 0.5),
                                                          ("block:1x4", 0.5, 0.5)])
def test_magnitude_pruning_reaches_and_records_its_sparsity(tiny_checkpoint, task_files, tmp_path,
                                                           pattern, sparsity, expected):
    from converters.pruning import PruningSpec, measure_sparsity
    from converters.sources import load_source

    spec = PruningSpec.parse(sparsity, pattern)
    result, _ = _run(tiny_checkpoint, *task_files, tmp_path / "pruned", epochs=3, pruning=spec)
    source = load_source(tmp_path / "pruned")
    measured = measure_sparsity(source.weights, source.config)  # measured again on the written checkpoint
    assert abs(measured["min_layer"] - expected) < 0.01, measured
    record = result.record["pruning"]
    assert record["measured"]["overall"] == pytest.approx(measured["overall"])
    assert record["schedule"]["end_step"] % record["schedule"]["frequency"] == 0
    if pattern == "2:4":
        assert record["measured"]["m_by_n_violations"] == 0
    # Pooler, classifier and embeddings stay dense.
    assert np.mean(source.weights["bert/pooler/dense/kernel"] == 0) < 0.01


def test_a_missed_sparsity_target_fails_loudly(tiny_checkpoint):
    from converters.pruning import PruningSpec, check_sparsity
    from converters.sources import load_source
    from edgebert.errors import ValidationError

    source = load_source(tiny_checkpoint)  # dense weights, as tfmot leaves them when its frequency is never hit
    with pytest.raises(ValidationError, match="sparsity of layer_0_query after stripping"):
        check_sparsity(source.weights, source.config, PruningSpec(target=0.5))


def test_the_schedule_ends_on_the_frequency_grid():
    from converters.pruning import PruningSpec, schedule_for
    from edgebert.errors import UsageError

    schedule = schedule_for(PruningSpec(target=0.5, end=0.7), 1000)
    assert schedule.end_step <= 700 and (schedule.end_step - schedule.begin_step) % schedule.frequency == 0
    with pytest.raises(UsageError, match="pruning needs more fine-tuning"):
        schedule_for(PruningSpec(target=0.5, frequency=100), 50)  # tfmot's default frequency, too few steps


def test_cli_finetune_prints_progress_and_a_summary(tiny_checkpoint, task_files, tmp_path):
    result = invoke("finetune", tiny_checkpoint, "--task", task_files[0], "--dev", task_files[1],
                    "--out", tmp_path / "out", "--epochs", 1, "--batch-size", 16, "--learning-rate", "1e-3",
                    "--prune", 0.5)
    assert result.exit_code == 0, result.output
    assert "epoch 1: train loss" in result.stderr and "sparsity 50" in result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'out'}  (best epoch 1 of 1, dev accuracy ")
    assert ", sparsity 50." in result.stdout


def test_search_keeps_the_best_run_and_resumes(tiny_checkpoint, task_files, tmp_path):
    args = ["finetune", tiny_checkpoint, "--task", task_files[0], "--dev", task_files[1], "--out", tmp_path / "best",
            "--epochs", 1, "--batch-size", 16, "--learning-rate", "1e-3,1e-6"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "best" / "edgebert_source.json").read_text())["history"][-1]
    runs = {run["run"]: run["accuracy"] for run in record["search"]}
    assert set(runs) == {"bs16-lr0.001", "bs16-lr1e-06"}
    assert record["options"]["learning_rate"] == 0.001 and runs["bs16-lr0.001"] >= runs["bs16-lr1e-06"]
    again = invoke(*args, "--force")
    assert "bs16-lr0.001: done before" in again.stderr


def test_search_flag_runs_the_miniatures_grid(tiny_checkpoint, task_files, tmp_path, monkeypatch):
    """README: `--search` runs the BERT Miniatures' grid (batch 8-128 x learning rate 3e-4-3e-5). The grid
    is checked as data; the run uses a 1 x 2 stand-in for it (twenty runs would take minutes)."""
    from converters import finetune

    assert finetune.MINIATURES_BATCH_SIZES == (8, 16, 32, 64, 128)
    assert finetune.MINIATURES_LEARNING_RATES == (3e-4, 1e-4, 5e-5, 3e-5)
    monkeypatch.setattr(finetune, "MINIATURES_BATCH_SIZES", (16,))
    monkeypatch.setattr(finetune, "MINIATURES_LEARNING_RATES", (1e-3, 1e-6))
    real_finetune, runs = finetune.finetune, []

    def one_run(source, train, dev, out_dir, options, **kwargs):  # fails fast should the stand-in not apply
        assert (options.batch_size, options.learning_rate) in [(16, 1e-3), (16, 1e-6)], options
        runs.append((options.batch_size, options.learning_rate))
        return real_finetune(source, train, dev, out_dir, options, **kwargs)

    monkeypatch.setattr(finetune, "finetune", one_run)
    # --batch-size and --learning-rate are ignored with --search: the grid replaces them.
    result = invoke("finetune", tiny_checkpoint, "--task", task_files[0], "--dev", task_files[1], "--out",
                    tmp_path / "best", "--epochs", 1, "--search", "--batch-size", 64, "--learning-rate", "5e-5")
    assert result.exit_code == 0, result.output
    assert runs == [(16, 1e-3), (16, 1e-6)]
    record = json.loads((tmp_path / "best" / "edgebert_source.json").read_text())["history"][-1]
    scores = {run["run"]: run["accuracy"] for run in record["search"]}
    assert set(scores) == {"bs16-lr0.001", "bs16-lr1e-06"}
    best = max(scores, key=scores.get)
    assert record["options"]["learning_rate"] == {"bs16-lr0.001": 1e-3, "bs16-lr1e-06": 1e-6}[best]
    assert record["dev_metrics"]["accuracy"] == scores[best]


@pytest.mark.parametrize("patience, epochs_run", [(1, 2), (3, 4)])
def test_patience_stops_after_that_many_epochs_without_improvement(tiny_checkpoint, task_files, tmp_path, patience,
                                                                   epochs_run):
    """README: early stopping on --dev with `--patience`. At a learning rate of 1e-9 the dev score never
    moves after epoch 1, so a run of 6 epochs stops after 1 + patience of them, keeping epoch 1."""
    result = invoke("finetune", tiny_checkpoint, "--task", task_files[0], "--dev", task_files[1], "--out",
                    tmp_path / "out", "--epochs", 6, "--batch-size", 32, "--learning-rate", "1e-9",
                    "--max-train-examples", 64, "--patience", patience)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "edgebert_source.json").read_text())["history"][-1]
    assert [epoch["epoch"] for epoch in record["epochs"]] == list(range(1, epochs_run + 1))
    assert record["stopped_early"] is True and record["best_epoch"] == 1
    assert len({epoch["dev"]["accuracy"] for epoch in record["epochs"]}) == 1
    assert result.stdout.startswith(f"{tmp_path / 'out'}  (best epoch 1 of {epochs_run}, ")


@pytest.mark.parametrize("content, problem", [
    (b"sentence\tlabel\nfine words\t7\n", "out of range"),
    (b"sentence\tlabel\nfine words\n", "fields"),
    (b"sentence\tlabel\n\xff\xfe bad\t1\n", "UTF-8"),
    (b"", "empty"),
])
def test_bad_training_files_give_one_line(tiny_checkpoint, tmp_path, content, problem):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(content)
    result = invoke("finetune", tiny_checkpoint, "--task", bad, "--out", tmp_path / "out")
    line = error_line(result, 1)
    assert line.startswith(f"error: {bad}") and problem in line
    assert not (tmp_path / "out").exists()


def test_a_head_for_another_label_count_needs_new_head(tiny_classifier_checkpoint, task_files, tmp_path):
    result = invoke("finetune", tiny_classifier_checkpoint, "--task", task_files[0], "--out", tmp_path / "out")
    line = error_line(result, 2, progress=(f"reading {tiny_classifier_checkpoint}",))
    assert "has a classifier head for 3 labels but the task has 2 (pass --new-head" in line
