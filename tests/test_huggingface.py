"""Hugging Face models: the .nnc round trip without a skeleton, hostile records, export to a
folder transformers loads, folders that are not models. A tiny random BERT built here (no
download)."""

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import nncompress  # noqa: E402
from nncompress.errors import ConfigError, FormatError  # noqa: E402
from nncompress.format.container import pack_container, unpack_container  # noqa: E402
from nncompress.models.hf_arch import check_record, check_tokenizer_files  # noqa: E402
from nncompress.models.huggingface import (  # noqa: E402
    embedding_agreement,
    load_pretrained,
    sentence_embedding,
)
from nncompress.state import model_state  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(90)] + ["a", "cat", "dog", "the", "sat"]


def tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def batch():
    ids = torch.tensor([[2, 95, 96, 99, 3], [2, 97, 98, 3, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def make_folder(tmp_path: Path, pooling: str | None = "mean", normalize: bool = True) -> Path:
    folder = tmp_path / "tiny-bert"
    tiny_bert().save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    if pooling:
        mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "modules.json").write_text(json.dumps(mods))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
             "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    return folder


def test_roundtrip_without_skeleton_identical_outputs(tmp_path):
    model = tiny_bert()
    path = tmp_path / "m.nnc"
    nncompress.save(model, path)
    loaded = nncompress.load(path)
    assert type(loaded) is type(model)
    assert set(loaded.state_dict()) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # buffers the file does not store are rebuilt by the constructor
    assert torch.equal(loaded.embeddings.position_ids, model.embeddings.position_ids)
    with torch.no_grad():
        assert torch.equal(loaded(**batch())[0], model(**batch())[0])


def test_tied_weights_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, tie_word_embeddings=True)
    model = transformers.BertForMaskedLM(cfg).eval()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    nncompress.save(model, tmp_path / "mlm.nnc")
    loaded = nncompress.load(tmp_path / "mlm.nnc")
    assert type(loaded).__name__ == "BertForMaskedLM"
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    ids = torch.tensor([[2, 7, 8, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def _rewrite_arch(src: Path, dst: Path, edit) -> None:
    c = unpack_container(src.read_bytes(), str(src))
    meta = json.loads(json.dumps(c.meta))
    edit(meta["arch"]["kwargs"])
    dst.write_bytes(pack_container(meta, c.sections))


@pytest.mark.parametrize("edit, words", [
    (lambda kw: kw["config"].update(model_type="evil_remote_model"), "model_type"),
    (lambda kw: kw["config"].update(auto_map={"AutoModel": "evil.Model"}), "auto_map"),
    (lambda kw: kw["config"].update(_attn_implementation="x"), "_attn_implementation"),
    (lambda kw: kw["config"].update(attn_implementation="kernels-community/x"), "attn_implementation"),
    (lambda kw: kw["config"].update(text_config={"auto_map": {"AutoModel": "x.Y"}}), "auto_map"),
    (lambda kw: kw["config"].update(vocab_size=10**9), "parameters"),
    (lambda kw: kw["config"].update(num_hidden_layers=10**6), "num_hidden_layers"),
    (lambda kw: kw.update(model_class="os.system"), "model_class"),
    (lambda kw: kw.update(pooling="weird"), "pooling"),
    (lambda kw: kw.update(unexpected=1), "unexpected"),
])
def test_hostile_records_are_format_errors(tmp_path, edit, words):
    good = tmp_path / "m.nnc"
    nncompress.save(tiny_bert(), good)
    bad = tmp_path / "bad.nnc"
    _rewrite_arch(good, bad, edit)
    with pytest.raises(FormatError, match=words):
        nncompress.load(bad)


def test_check_record_and_tokenizer_files_refusals():
    with pytest.raises(FormatError, match="nested"):
        check_record({"model_type": "bert", "x": [[[[[1]]]]]})
    with pytest.raises(FormatError, match="not allowed"):
        check_tokenizer_files({"../../etc/passwd": "x"})
    with pytest.raises(FormatError, match="auto_map"):
        check_tokenizer_files({"tokenizer_config.json": json.dumps({"auto_map": {"AutoTokenizer": "x.Y"}})})


def test_load_pretrained_folder_pooling_and_nnc(tmp_path):
    folder = make_folder(tmp_path, "mean", True)
    pre = load_pretrained(folder)
    assert (pre.pooling, pre.normalize) == ("mean", True)
    enc = pre.tokenizer(["the cat sat", "a dog"], padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = sentence_embedding(pre.model, enc, pre.pooling, pre.normalize)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))
    path = tmp_path / "p.nnc"
    nncompress.save(pre.model, path)
    back = load_pretrained(path)  # model, stored tokenizer and pooling from the file
    assert (back.pooling, back.normalize) == ("mean", True)
    enc2 = back.tokenizer(["the cat sat", "a dog"], padding=True, return_tensors="pt")
    assert all(torch.equal(enc[k], enc2[k]) for k in enc)
    with torch.no_grad():
        assert torch.equal(sentence_embedding(back.model, enc2, "mean", True), emb)


def test_sentence_embedding_pooling_formulas():
    model = tiny_bert()
    b = batch()
    with torch.no_grad():
        h = model(**b)[0]
        mean = sentence_embedding(model, b, "mean", normalize=False)
        cls = sentence_embedding(model, b, "cls", normalize=False)
        mx = sentence_embedding(model, b, "max", normalize=False)
    assert torch.allclose(mean[1], h[1, :4].mean(0), atol=1e-6)  # the padded token is left out
    assert torch.equal(cls, h[:, 0])
    assert torch.equal(mx[1], h[1, :4].max(0).values)
    with pytest.raises(ConfigError, match="pooling"):
        sentence_embedding(model, b, "median")


def test_embedding_agreement():
    e = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    same = embedding_agreement(e, e, k=5)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["topk_overlap"] == 1.0
    flipped = embedding_agreement(e, -e, k=5)
    assert flipped["mean_cosine"] == pytest.approx(-1.0)


def test_export_huggingface_loads_identically(tmp_path):
    from nncompress.deploy.huggingface import export_huggingface

    pre = load_pretrained(make_folder(tmp_path))
    nncompress.save(pre.model, tmp_path / "m.nnc")
    out = tmp_path / "export"
    report = export_huggingface(tmp_path / "m.nnc", out)
    assert {"config.json", "model.safetensors", "vocab.txt", "modules.json"} <= set(report.files)
    again = transformers.AutoModel.from_pretrained(out, local_files_only=True)
    with torch.no_grad():
        assert torch.equal(again(**batch())[0], pre.model(**batch())[0])
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(out), device="cpu", local_files_only=True)
    emb = model.encode(["the cat sat", "a dog"], convert_to_tensor=True)
    enc = pre.tokenizer(["the cat sat", "a dog"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = sentence_embedding(pre.model, enc, "mean", True)
    assert torch.allclose(emb.cpu(), ours, atol=1e-5)


def test_cli_export_and_eval(tmp_path, capsys):
    from nncompress.cli import main

    folder = make_folder(tmp_path)
    pre = load_pretrained(folder)
    nncompress.save(pre.model, tmp_path / "m.nnc")
    text = tmp_path / "eval.txt"
    text.write_text("the cat sat\na dog\nthe dog sat\na cat\n")
    assert main(["eval", str(tmp_path / "m.nnc"), "--text", str(text), "--reference", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mean_cosine"] == pytest.approx(1.0) and result["sentences"] == 4
    assert main(["export", str(tmp_path / "m.nnc"), str(tmp_path / "hf"), "--huggingface"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert main(["eval", str(tmp_path / "m.nnc"), "--text", str(text)]) == 2  # needs --reference


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_remote_model", "auto_map": {}}))
    with pytest.raises(ConfigError, match="remote code"):
        load_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrained(tmp_path / "missing")


def test_state_is_copied_and_capture_ignores_other_models():
    import copy

    from torch import nn

    from nncompress.models import arch_of

    m = tiny_bert()
    model_state(m, create=True).huggingface.update(pooling="cls", normalize=False)
    rec = arch_of(copy.deepcopy(m))
    assert rec["name"] == "huggingface" and rec["kwargs"]["pooling"] == "cls"
    assert "_name_or_path" not in rec["kwargs"]["config"]
    assert arch_of(nn.Linear(2, 2)) is None
