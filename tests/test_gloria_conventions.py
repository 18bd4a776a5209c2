"""GLoRIA's conventions where cmgl differs, each selectable, against GLoRIA's functions
(tests/gloria_oracle.py) in float64: its training slots ([CLS] + the words), its zero-shot slots
(the words + [SEP]) and score (max over words, max over prompts), the probe's features."""
import numpy as np
import pytest
import torch
from gloria_oracle import get_local_similarities, local_similarities, ragged_batch, zero_shot_classification

from cmgl_dist.config import load_config
from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.evaluate.features import SplitFeatures
from cmgl_dist.evaluate.zero_shot import class_scores, encode_texts, zero_shot_settings
from cmgl_dist.losses import local_similarity_reference
from cmgl_dist.losses.similarity import local_similarity
from cmgl_dist.model.cmgl_model import build_model
from cmgl_dist.model.text_backbone import minilm_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()


def test_cmgl_words_leave_out_cls_and_sep(tokenizer):
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly."], max_length=97)
    assert out["words"] == [["Mild", "cardiomegaly"]]


def test_sep_words_are_gloria_slots_one_to_cap_len(tokenizer):
    """GLoRIA's local loss and zero-shot score take slots 1..cap_len, cap_len = words + 1: [SEP] is the last."""
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly.", "No effusion"], max_length=97, special_words="sep")
    assert out["words"] == [["Mild", "cardiomegaly", "[SEP]"], ["No", "effusion", "[SEP]"]]
    for row in range(2):
        tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][row])
        ids = dict(zip(tokens, out["word_ids"][row].tolist()))
        assert (ids["[CLS]"], ids["[SEP]"], ids.get("[PAD]", -1)) == (-1, 2, -1)
    assert out["word_mask"].tolist() == [[True] * 3, [True] * 3]


def test_cls_sep_words_are_gloria_whole_word_tensor(tokenizer):
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly."], max_length=97, special_words="cls_sep")
    assert out["words"] == [["[CLS]", "Mild", "cardiomegaly", "[SEP]"]]
    assert out["word_ids"][0].tolist() == [0, 1, 2, 2, 2, 2, -1, 3]  # '.' still belongs to no word


def test_unknown_special_words_are_refused(tokenizer):
    with pytest.raises(ValueError, match="special_words"):
        tokenize_texts(tokenizer, ["x"], 97, special_words="all")


def test_max_word_pooling_matches_gloria_zero_shot_score():
    words, word_mask, regions, lengths = ragged_batch(5, 4, 7, 9, 6, seed=3)
    with_cls_slot = torch.cat([torch.randn(5, 1, 6, dtype=torch.float64), words], dim=1)  # skipped: slot 0
    expected = get_local_similarities(with_cls_slot, lengths, regions, 4.0, 5.0)
    got = local_similarity_reference(words, word_mask, regions, 4.0, 5.0, word_pooling="max", block_elements=500)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    lse = local_similarity_reference(words, word_mask, regions, 4.0, 5.0)
    several = torch.tensor(lengths) > 1
    assert (lse[several] > got[several]).all(), "log-sum-exp exceeds the max where a text has several words"
    torch.testing.assert_close(lse[~several], got[~several])


def test_max_pooling_routes_to_the_reference_and_is_checked():
    words, word_mask, regions, _ = ragged_batch(2, 2, 3, 4, 5, seed=1)
    assert torch.equal(local_similarity(words, word_mask, regions, word_pooling="max", backend="auto"),
                       local_similarity_reference(words, word_mask, regions, word_pooling="max"))
    with pytest.raises(ValueError, match="word_pooling"):
        local_similarity_reference(words, word_mask, regions, word_pooling="mean")


def test_config_selects_both_conventions():
    cfg = load_config("debug", ["data.special_words=sep", "eval.retrieval_word_pooling=max"])
    assert (cfg.data.special_words, cfg.eval.retrieval_word_pooling) == ("sep", "max")
    default = load_config("debug")
    assert default.data.special_words == "none"
    assert (default.eval.zero_shot_word_pooling, default.eval.retrieval_word_pooling) == ("max", "logsumexp")


def test_a_config_naming_one_word_pooling_sets_both():
    """Exports written before the split carry `eval.word_pooling`; they still load, meaning what they meant."""
    cfg = load_config("debug", ["eval.word_pooling=logsumexp"])
    assert (cfg.eval.zero_shot_word_pooling, cfg.eval.retrieval_word_pooling) == ("logsumexp", "logsumexp")


def test_cls_words_are_gloria_training_slots(tokenizer):
    """GLoRIA's local loss takes slots :cap_len of its word tensor, cap_len = words + 1: [CLS] + the words."""
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly.", "No effusion"], max_length=97, special_words="cls")
    assert out["words"] == [["[CLS]", "Mild", "cardiomegaly"], ["[CLS]", "No", "effusion"]]
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][1])
    ids = dict(zip(tokens, out["word_ids"][1].tolist()))
    assert (ids["[CLS]"], ids["no"], ids["[SEP]"]) == (0, 1, -1)


TEXTS = ["Mild cardiomegaly. Small left pleural effusion.", "No effusion", "Heart size is normal, lungs clear.",
         "Bibasilar atelectasis"]


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    return build_model(load_config("debug").model).double().eval()


def gloria_word_tensor(model, texts, max_length):
    """GLoRIA's aggregated word tensor ([CLS], the words, [SEP], zero slots) and its cap_lens (words + 1)."""
    _, words, word_mask = encode_texts(model, texts, max_length, special_words="cls_sep")
    return words, (word_mask.sum(1) - 1).tolist()


@torch.inference_mode()
def test_cls_training_slots_equal_gloria_local_loss(model64):
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, regions = model64.encode_image(images)
    gloria_words, cap_lens = gloria_word_tensor(model64, TEXTS, 32)
    expected = local_similarities(gloria_words, cap_lens, regions, 4.0, 5.0)
    _, words, word_mask = encode_texts(model64, TEXTS, 32, special_words="cls")
    assert words.dtype == torch.float64
    got = local_similarity_reference(words, word_mask, regions, 4.0, 5.0)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    _, sep_words, sep_mask = encode_texts(model64, TEXTS, 32, special_words="sep")
    assert not torch.allclose(local_similarity_reference(sep_words, sep_mask, regions, 4.0, 5.0), expected)


@torch.inference_mode()
def test_gloria_config_zero_shot_score_equals_gloria(model64):
    """The gloria config's zero-shot settings: slots 1..cap_len, max over words, max over prompts,
    standardised per class; against `zero_shot_classification` on the same features."""
    cfg = load_config("gloria_r50_bert")
    images = torch.randn(5, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    image_global, regions = model64.encode_image(images)
    feats = SplitFeatures(keys=[str(i) for i in range(5)], labels=torch.zeros(5, 6), image_global=image_global,
                          regions=regions)
    prompts = {"cardiomegaly": TEXTS[:2], "atelectasis": TEXTS[2:], "mixed": TEXTS[1:]}
    got = class_scores(model64, feats, prompts, **zero_shot_settings(cfg, cfg.eval))

    class_texts = []
    for texts in prompts.values():
        sentence, _, _ = encode_texts(model64, texts, cfg.data.max_length)
        class_texts.append((sentence, *gloria_word_tensor(model64, texts, cfg.data.max_length)))
    expected = zero_shot_classification(image_global, regions, class_texts, cfg.loss.gamma1, cfg.loss.gamma2)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10, atol=1e-10)
    cmgl = class_scores(model64, feats, prompts, **zero_shot_settings(cfg, load_config("debug").eval))
    assert not np.allclose(cmgl, expected.numpy())


def test_gloria_config_names_gloria_conventions():
    cfg = load_config("gloria_r50_bert")
    assert cfg.data.special_words == "cls"
    assert (cfg.eval.zero_shot_special_words, cfg.eval.zero_shot_word_pooling) == ("sep", "max")
    assert (cfg.eval.prompt_pooling, cfg.eval.probe_features) == ("max", "backbone")
    assert (cfg.loss.gamma1, cfg.loss.gamma2, cfg.loss.gamma3, cfg.loss.global_temperature) == (4.0, 5.0, 10.0, 0.1)
    default = load_config("debug").eval
    assert (default.zero_shot_special_words, default.prompt_pooling, default.probe_features) == (None, "mean",
                                                                                                  "backbone")


@torch.inference_mode()
def test_probe_reads_the_backbones_pooled_features_or_the_embedding(model64):
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    image_global, _, pooled = model64.encode_image(images, with_pooled=True)
    assert pooled.shape == (2, model64.image_backbone.global_dim)
    torch.testing.assert_close(model64.image_global_head(pooled), image_global)
    feats = SplitFeatures(keys=["a", "b"], labels=torch.zeros(2, 6), image_global=image_global, image_pooled=pooled)
    assert np.array_equal(feats.probe_inputs("backbone"), pooled.numpy())
    assert np.array_equal(feats.probe_inputs("embedding"), image_global.numpy())
    with pytest.raises(ValueError, match="probe_features"):
        feats.probe_inputs("regions")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, small_shards):
    from cmgl_dist.engine.export import export_model

    cfg = load_config("debug", [f"data.shards={small_shards}", "eval.bootstrap=0"])
    torch.manual_seed(0)
    return export_model(build_model(cfg.model).state_dict(), cfg, tmp_path_factory.mktemp("run") / "export")


def test_evaluate_probes_the_features_eval_probe_features_names(tiny_export, tmp_path):
    import json

    from cmgl_dist.evaluate.features import load_features
    from cmgl_dist.evaluate.probe import fit_predict
    from cmgl_dist.evaluate.run import main as evaluate_main

    scores = {}
    for choice in ("backbone", "embedding"):
        out = tmp_path / choice
        assert evaluate_main(["--exports", str(tiny_export), "--out", str(out), "--tasks", "probe", "--fractions", "1.0",
                              "--set", f"eval.probe_features={choice}"]) == 0
        (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        scores[choice] = np.load(out / record["scores_file"])["scores"]
        files = {p.name.split("-")[0]: p for p in (out / "features").rglob("*.safetensors")}
    train, test = load_features(files["train"]), load_features(files["test"])
    train_y = train.labels[:, :5].numpy() > 0.5
    for choice, got in scores.items():
        expected, _ = fit_predict(train.probe_inputs(choice), train_y, test.probe_inputs(choice), seed=0)
        np.testing.assert_allclose(got, expected)
    assert not np.allclose(scores["backbone"], scores["embedding"])


def test_gloria_config_sentence_feature_equals_gloria_bert_encoder(tokenizer):
    """GLoRIA pads every report to max_length and averages over all of it: the gloria config's
    model.sentence_pool_length gives the same sentence from cmgl's own (longest) padding."""
    from gloria_oracle import sentence_embedding

    from cmgl_dist.model.text_backbone import TextBackbone, load_text_backbone

    cfg = load_config("gloria_r50_bert", [])
    transformer = load_text_backbone("tiny")[0].double().eval()
    texts = ["Heart size is normal. No pleural effusion.", "Cardiomegaly with bibasilar atelectasis."]
    padded = tokenizer(texts, padding="max_length", truncation=True, max_length=cfg.data.max_length,
                       return_tensors="pt")  # GLoRIA's process_text
    with torch.no_grad():
        states = transformer(**padded, output_hidden_states=True).hidden_states
        wanted = sentence_embedding(states, padded["input_ids"], {i: w for w, i in tokenizer.vocab.items()},
                                    cfg.model.text_last_layers)
        ours = tokenize_texts(tokenizer, texts, cfg.data.max_length, cfg.data.special_words)
        backbone = TextBackbone(transformer, cfg.model.text_last_layers, pool_length=cfg.model.sentence_pool_length)
        sentence, _ = backbone(ours["input_ids"], ours["attention_mask"], ours["word_ids"], ours["word_mask"].shape[1])
        mean_pooled, _ = TextBackbone(transformer, cfg.model.text_last_layers)(
            ours["input_ids"], ours["attention_mask"], ours["word_ids"], ours["word_mask"].shape[1])
    assert ours["input_ids"].shape[1] < cfg.data.max_length  # cmgl pads to the batch's longest text
    torch.testing.assert_close(sentence, wanted, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(mean_pooled, wanted)  # the default (mean over the text's tokens) differs


def test_evaluate_runs_the_linear_head_probe_on_train_val_and_test_features(tiny_export, tmp_path):
    import json

    from cmgl_dist.evaluate.features import load_features
    from cmgl_dist.evaluate.linear_probe import fit_predict_linear
    from cmgl_dist.evaluate.run import main as evaluate_main

    assert evaluate_main(["--exports", str(tiny_export), "--out", str(tmp_path), "--tasks", "probe", "--fractions",
                          "1.0", "--set", "eval.probe_model=linear"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    got = np.load(tmp_path / record["scores_file"])["scores"]
    files = {p.name.split("-")[0]: p for p in (tmp_path / "features").rglob("*.safetensors")}
    train, val, test = (load_features(files[s]) for s in ("train", "val", "test"))
    expected, epochs = fit_predict_linear(train.probe_inputs("backbone"), train.labels[:, :5].numpy() > 0.5,
                                          val.probe_inputs("backbone"), val.labels[:, :5].numpy() > 0.5,
                                          test.probe_inputs("backbone"), seed=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert record["epochs"] == epochs
