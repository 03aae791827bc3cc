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
