"""Every kind of source the converter accepts, and every way one can be broken."""
import json
import zipfile

import numpy as np
import pytest

from edgebert.errors import ConfigError, SourceError, VocabError


def _load(path, **kwargs):
    from converters.sources import load_source
    return load_source(path, **kwargs)


def test_google_directory_prefix_index_and_zip_give_the_same_weights(tiny_checkpoint, tmp_path):
    from_dir = _load(tiny_checkpoint)
    assert from_dir.kind == "google-checkpoint" and from_dir.random_weights and from_dir.lowercase
    assert from_dir.num_labels == 0 and from_dir.variant is None
    zip_path = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for file in tiny_checkpoint.iterdir():
            archive.write(file, f"wrapped/{file.name}")  # like Google's zips that wrap a folder
    for other in (tiny_checkpoint / "bert_model.ckpt", tiny_checkpoint / "bert_model.ckpt.index", zip_path):
        source = _load(other)
        assert source.config == from_dir.config
        assert source.weights.keys() == from_dir.weights.keys()
        assert all(np.array_equal(source.weights[k], from_dir.weights[k]) for k in source.weights)
    assert _load(zip_path).kind == "google-zip"


def test_classifier_checkpoint_is_detected(tiny_classifier_checkpoint):
    source = _load(tiny_classifier_checkpoint)
    assert source.num_labels == 3
    assert source.weights["output_weights"].shape == (3, source.config.hidden_size)


def _hf_directory(tmp_path, google_source, with_prefix=True, classifier=False):
    """Write Hugging Face names and orientations from a Google source, independently of the loader."""
    from safetensors.numpy import save_file

    w = google_source.weights
    prefix = "bert." if with_prefix else ""
    tensors = {f"{prefix}embeddings.word_embeddings.weight": w["bert/embeddings/word_embeddings"],
               f"{prefix}embeddings.position_embeddings.weight": w["bert/embeddings/position_embeddings"],
               f"{prefix}embeddings.token_type_embeddings.weight": w["bert/embeddings/token_type_embeddings"],
               f"{prefix}embeddings.LayerNorm.weight": w["bert/embeddings/LayerNorm/gamma"],
               f"{prefix}embeddings.LayerNorm.bias": w["bert/embeddings/LayerNorm/beta"],
               f"{prefix}pooler.dense.weight": w["bert/pooler/dense/kernel"].T,
               f"{prefix}pooler.dense.bias": w["bert/pooler/dense/bias"],
               "cls.predictions.bias": w["cls/predictions/output_bias"]}
    for n in range(google_source.config.num_layers):
        for hf, g in [("attention.self.query", "attention/self/query"), ("attention.self.key", "attention/self/key"),
                      ("attention.self.value", "attention/self/value"),
                      ("attention.output.dense", "attention/output/dense"),
                      ("intermediate.dense", "intermediate/dense"), ("output.dense", "output/dense")]:
            tensors[f"{prefix}encoder.layer.{n}.{hf}.weight"] = w[f"bert/encoder/layer_{n}/{g}/kernel"].T
            tensors[f"{prefix}encoder.layer.{n}.{hf}.bias"] = w[f"bert/encoder/layer_{n}/{g}/bias"]
        for hf, g in [("attention.output.LayerNorm", "attention/output/LayerNorm"), ("output.LayerNorm", "output/LayerNorm")]:
            tensors[f"{prefix}encoder.layer.{n}.{hf}.weight"] = w[f"bert/encoder/layer_{n}/{g}/gamma"]
            tensors[f"{prefix}encoder.layer.{n}.{hf}.bias"] = w[f"bert/encoder/layer_{n}/{g}/beta"]
    config = {"model_type": "bert", "vocab_size": google_source.config.vocab_size,
              "hidden_size": google_source.config.hidden_size, "num_hidden_layers": google_source.config.num_layers,
              "num_attention_heads": google_source.config.num_heads,
              "intermediate_size": google_source.config.intermediate_size,
              "max_position_embeddings": google_source.config.max_positions, "type_vocab_size": 2,
              "hidden_act": "gelu", "layer_norm_eps": 1e-12}
    if classifier:
        tensors["classifier.weight"] = np.ones((2, google_source.config.hidden_size), np.float32)
        tensors["classifier.bias"] = np.zeros(2, np.float32)
        config["id2label"] = {"0": "negative", "1": "positive"}
    directory = tmp_path / "hf"
    directory.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "vocab.txt").write_text("\n".join(google_source.vocab) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return directory


@pytest.mark.parametrize("with_prefix", [True, False])
def test_hugging_face_safetensors_maps_to_the_same_weights(tiny_checkpoint, tmp_path, with_prefix):
    google = _load(tiny_checkpoint)
    source = _load(_hf_directory(tmp_path, google, with_prefix))
    assert source.kind == "hf-safetensors" and source.lowercase
    # HF "gelu" is the erf form; Google's is tanh: the configs differ in exactly that.
    assert source.config.activation.value == "gelu_erf"
    encoder = {k: v for k, v in google.weights.items() if k.startswith("bert/")}
    assert encoder.keys() == source.weights.keys()
    for name, value in encoder.items():
        np.testing.assert_array_equal(source.weights[name], value, err_msg=name)


def test_hugging_face_classifier_labels(tiny_checkpoint, tmp_path):
    source = _load(_hf_directory(tmp_path, _load(tiny_checkpoint), classifier=True))
    assert source.num_labels == 2 and source.labels == ["negative", "positive"]


def test_non_bert_safetensors_is_refused(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 4, "hidden_size": 4,
                                                      "num_hidden_layers": 1, "num_attention_heads": 1,
                                                      "intermediate_size": 4}))
    save_file({"transformer.h.0.attn.weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(SourceError) as error:
        _load(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'model.safetensors'}: not a BERT checkpoint (no "
                                "embeddings.word_embeddings.weight; has transformer.h.0.attn.weight...)")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match=r"config.json: model_type is 'gpt2', not 'bert'"):
        _load(tmp_path)


def test_pytorch_bin_without_torch_is_a_clear_error(tiny_checkpoint, tmp_path, monkeypatch):
    import builtins

    directory = _hf_directory(tmp_path, _load(tiny_checkpoint))
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "torch" else real_import(name, *a, **k))
    with pytest.raises(SourceError, match=r"pytorch_model.bin: pytorch_model.bin needs torch"):
        _load(directory)


def test_truncated_safetensors(tiny_checkpoint, tmp_path):
    directory = _hf_directory(tmp_path, _load(tiny_checkpoint))
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SourceError, match=r"model.safetensors: corrupt or truncated safetensors file"):
        _load(directory)


def test_missing_path_and_non_checkpoint_directory(tmp_path):
    with pytest.raises(SourceError) as error:
        _load(tmp_path / "nowhere")
    assert str(error.value) == f"{tmp_path / 'nowhere'}: no such file or directory (nor a variant name such as bert-mini)"
    with pytest.raises(SourceError, match="not a checkpoint directory"):
        _load(tmp_path)


def test_missing_vocab(tiny_checkpoint, copy_of):
    directory = copy_of(tiny_checkpoint)
    (directory / "vocab.txt").unlink()
    with pytest.raises(VocabError, match=r"vocab.txt: "):
        _load(directory)


def test_vocab_size_disagreeing_with_config(tiny_checkpoint, copy_of):
    directory = copy_of(tiny_checkpoint)
    with open(directory / "vocab.txt", "a") as handle:
        handle.write("extra\n")
    with pytest.raises(ConfigError, match=r"vocab.txt: has \d+ tokens but the config says vocab_size \d+"):
        _load(directory)


def test_config_disagreeing_with_weights(tiny_checkpoint, copy_of):
    directory = copy_of(tiny_checkpoint)
    config = json.loads((directory / "bert_config.json").read_text())
    config["intermediate_size"] = 128
    (directory / "bert_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        _load(directory)
    assert str(error.value) == (f"{directory / 'bert_config.json'}: config implies "
                                "bert/encoder/layer_0/intermediate/dense/kernel of shape [32, 128] but the weights "
                                "have [32, 64]")
    config["num_hidden_layers"] = 3
    config["intermediate_size"] = 64
    (directory / "bert_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"the weights have no 'bert/encoder/layer_2/"):
        _load(directory)


def test_missing_and_truncated_checkpoint_data(tiny_checkpoint, copy_of):
    directory = copy_of(tiny_checkpoint)
    data = directory / "bert_model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"bert_model.ckpt.data-00000-of-00001: corrupt or truncated checkpoint data"):
        _load(directory)
    data.unlink()
    with pytest.raises(SourceError, match=r"checkpoint data file \(.data-00000-of-00001\) not found"):
        _load(directory)


def test_corrupt_checkpoint_index(tiny_checkpoint, copy_of):
    directory = copy_of(tiny_checkpoint)
    (directory / "bert_model.ckpt.index").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SourceError, match=r"bert_model.ckpt.index: corrupt checkpoint index"):
        _load(directory)
    (directory / "bert_model.ckpt.index").unlink()
    with pytest.raises(SourceError, match=r"no checkpoint found"):
        _load(directory)


def test_unsafe_zip_is_refused(tmp_path):
    from edgebert.errors import ArchiveError

    zip_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("../escape.txt", "x")
    with pytest.raises(ArchiveError, match=r"evil.zip: .*\.\./escape.txt"):
        _load(zip_path)
    assert not (tmp_path.parent / "escape.txt").exists()


# --- the tokenizer's word-length limit follows the source ---------------------------------------------


def _hf_tokenizer_json(path, vocab, lowercase=True, max_input_chars_per_word=100):
    """A tokenizer.json laid out as transformers' BertTokenizerFast saves it, built with the `tokenizers`
    library directly (not with edgebert's build_tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = {token: index for index, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=max_input_chars_per_word))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None, clean_text=True,
                                                      handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.save(str(path))
    return path


def test_word_length_limit_follows_the_source(tiny_checkpoint, tmp_path):
    # Google's WordpieceTokenizer: 200; transformers' BertTokenizer (vocab.txt): 100; a tokenizer.json: its own.
    google = _load(tiny_checkpoint)
    assert google.max_word_chars == 200
    directory = _hf_directory(tmp_path, google)
    assert _load(directory).max_word_chars == 100
    _hf_tokenizer_json(directory / "tokenizer.json", google.vocab, max_input_chars_per_word=150)
    assert _load(directory).max_word_chars == 150  # beside vocab.txt, the tokenizer.json's setting counts
    (directory / "vocab.txt").unlink()
    assert _load(directory).max_word_chars == 150


def test_word_length_limit_survives_a_written_trim(tiny_checkpoint, tmp_path):
    # A trimmed checkpoint is written in Google's layout; its edgebert record keeps the source's limit.
    import dataclasses

    from converters.vocab_trim import trim_vocabulary, write_trimmed

    source = dataclasses.replace(_load(tiny_checkpoint), max_word_chars=150)  # as from a tokenizer.json
    trimmed, report = trim_vocabulary(source, ["the film was a delight from start to finish"])
    assert trimmed.max_word_chars == 150
    written = write_trimmed(trimmed, report, tmp_path / "trimmed")
    assert json.loads((written / "edgebert_source.json").read_text())["max_word_chars"] == 150
    assert _load(written).max_word_chars == 150
    record = json.loads((written / "edgebert_source.json").read_text())
    (written / "edgebert_source.json").write_text(json.dumps({**record, "max_word_chars": "many"}))
    with pytest.raises(SourceError, match=r"edgebert_source.json: edgebert record has a bad max_word_chars 'many'"):
        _load(written)


def test_a_non_wordpiece_tokenizer_json_is_refused(tiny_checkpoint, tmp_path):
    from tokenizers import Tokenizer, models

    directory = _hf_directory(tmp_path, _load(tiny_checkpoint))
    Tokenizer(models.BPE(unk_token="[UNK]")).save(str(directory / "tokenizer.json"))
    with pytest.raises(VocabError, match=r"tokenizer.json: "):
        _load(directory)


def test_hugging_face_folder_with_only_tokenizer_json_converts(tiny_checkpoint, tmp_path):
    """README: a Hugging Face directory with `tokenizer.json` and no vocab.txt. The bundle keeps the file's
    vocab, casing and word-length limit, gives the reference tokenizer's ids, and computes what the
    independent numpy BERT computes (erf GELU: Hugging Face's "gelu")."""
    from converters.pipeline import ConvertOptions, convert
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.tokenizer import encode, load_tokenizer, max_word_chars
    from reference_bert import bert_forward
    from reference_tokenization import FullTokenizer, reference_encode

    google = _load(tiny_checkpoint)
    directory = _hf_directory(tmp_path, google)
    (directory / "vocab.txt").unlink()
    _hf_tokenizer_json(directory / "tokenizer.json", google.vocab, max_input_chars_per_word=150)
    source = _load(directory)
    assert source.vocab is None and source.tokenizer_json == directory / "tokenizer.json"
    assert source.lowercase and source.max_word_chars == 150

    convert(directory, tmp_path / "bundle", ConvertOptions(quantize="float32", seq_len=32, validation_size=4))
    bundle = read_bundle(tmp_path / "bundle")
    assert bundle.manifest["source"]["kind"] == "hf-safetensors"
    assert bundle.manifest["tokenizer"] == {"file": "tokenizer.json", "lowercase": True,
                                            "vocab_size": len(google.vocab), "max_word_chars": 150}
    tokenizer = load_tokenizer(bundle.tokenizer_path)
    assert max_word_chars(tokenizer) == 150

    reference = FullTokenizer(google.vocab, lowercase=True, max_input_chars_per_word=150)
    texts = ["The FILM was a delight.", "long " + "ab" * 80 + " and " + "ab" * 70 + " words",
             ("Is it open?", "The shop opens at nine.")]
    model = TFLiteModel(bundle.model_path)
    for text in texts:
        encoded, want_ids = encode(tokenizer, [text], 32), reference_encode(reference, [text], 32)
        for name in want_ids:
            np.testing.assert_array_equal(encoded[name], want_ids[name], err_msg=f"{name} of {text!r}")
        want = bert_forward(google.weights, *(encoded[n][0] for n in ("input_ids", "attention_mask", "token_type_ids")),
                            google.config.num_heads, approximate_gelu=False)
        np.testing.assert_allclose(model(**encoded)["pooled_output"][0], want["pooled_output"], atol=1e-5, rtol=0)
    # the 140-character word is word pieces, the 160-character one is [UNK]
    ids = encode(tokenizer, [texts[1]], 32)["input_ids"][0].tolist()
    assert ids.count(google.vocab.index("[UNK]")) == 1


# --- run_classifier output and pytorch_model.bin --------------------------------------------------------


def _write_tf1_checkpoint(prefix, variables):
    """A TF1 checkpoint as run_classifier's Estimator writes one: float variables plus an int64 global_step."""
    from converters.tf_import import tf

    graph = tf.Graph()
    with graph.as_default():
        made = [tf.compat.v1.Variable(value, name=name) for name, value in variables.items()]
        saver = tf.compat.v1.train.Saver(made, write_version=tf.compat.v1.train.SaverDef.V2)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.variables_initializer(made))
            saver.save(session, str(prefix), write_meta_graph=False, write_state=False)


def test_run_classifier_checkpoint_with_adam_slots_and_a_state_file(tiny_classifier_checkpoint, tmp_path):
    """README: fine-tuned run_classifier checkpoints (top-level output_weights/output_bias, optimizer
    slots ignored) with a `checkpoint` state file: the state file's latest checkpoint is the one read,
    its adam_m/adam_v slots are listed as unused in the manifest, and the classifier computes what the
    independent numpy BERT computes with those weights."""
    import shutil

    from converters.pipeline import ConvertOptions, convert
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.predict import softmax
    from edgebert.tokenizer import encode, load_tokenizer
    from reference_bert import bert_forward

    google = _load(tiny_classifier_checkpoint)
    directory = tmp_path / "run_classifier_out"
    directory.mkdir()
    for name in ("bert_config.json", "vocab.txt"):
        shutil.copy(tiny_classifier_checkpoint / name, directory / name)
    rng = np.random.default_rng(5)
    latest = {name: (value + 0.01 * rng.standard_normal(value.shape)).astype(np.float32)
              for name, value in google.weights.items()}
    slots = {f"{name}/{slot}": np.full_like(value, 0.5) for name, value in latest.items()
             for slot in ("adam_m", "adam_v")}
    # Three checkpoints; the latest (18) sorts neither first nor last by name (12, 18, 6).
    for step in (6, 12):
        _write_tf1_checkpoint(directory / f"model.ckpt-{step}", {**google.weights, **slots,
                                                                 "global_step": np.int64(step)})
    _write_tf1_checkpoint(directory / "model.ckpt-18", {**latest, **slots, "global_step": np.int64(18)})
    (directory / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-18"\n'
                                          'all_model_checkpoint_paths: "model.ckpt-6"\n'
                                          'all_model_checkpoint_paths: "model.ckpt-12"\n'
                                          'all_model_checkpoint_paths: "model.ckpt-18"\n')
    source = _load(directory)
    assert source.num_labels == 3 and "global_step" not in source.weights
    np.testing.assert_array_equal(source.weights["output_weights"], latest["output_weights"])  # ckpt-18's

    manifest = convert(directory, tmp_path / "bundle",
                       ConvertOptions(quantize="float32", seq_len=32, validation_size=4)).manifest
    assert manifest["head"] == "classifier"
    assert set(manifest["source"]["unused_variables"]) >= set(slots)
    assert not set(manifest["source"]["unused_variables"]) & {name for name in latest if name.startswith("bert/")}
    bundle = read_bundle(tmp_path / "bundle")
    encoded = encode(load_tokenizer(bundle.tokenizer_path), [("Is it open?", "The shop opens at nine.")], 32)
    want = bert_forward(latest, *(encoded[n][0] for n in ("input_ids", "attention_mask", "token_type_ids")),
                        google.config.num_heads, num_labels=3)
    np.testing.assert_allclose(TFLiteModel(bundle.model_path)(**encoded)["probabilities"][0], softmax(want["logits"]),
                               atol=1e-5, rtol=0)


def test_pytorch_model_bin_through_weights_only(tiny_checkpoint, tmp_path):
    """README: pytorch_model.bin only through torch's weights_only loader: a plain state dict loads with
    the same weights as model.safetensors; a pickle that calls a function is refused."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pytorch_model.bin needs it; the "
                                                "project does not install it)")
    from safetensors.numpy import load_file

    google = _load(tiny_checkpoint)
    directory = _hf_directory(tmp_path, google)
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save({name: torch.from_numpy(value) for name, value in tensors.items()}, directory / "pytorch_model.bin")
    source = _load(directory)
    assert source.kind == "hf-pytorch"
    for name, value in google.weights.items():
        if name.startswith("bert/"):
            np.testing.assert_array_equal(source.weights[name], value, err_msg=name)

    class Payload:
        def __reduce__(self):
            import os
            return os.getcwd, ()

    torch.save({"embeddings.word_embeddings.weight": Payload()}, directory / "pytorch_model.bin")
    with pytest.raises(SourceError, match=r"pytorch_model.bin: cannot load safely with weights_only=True"):
        _load(directory)
