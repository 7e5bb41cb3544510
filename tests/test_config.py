"""config.json of both generations against transformers 5.24 reading the same file: transformers 4.x wrote rope_theta,
rope_local_base_freq and rope_scaling (tests/fixtures/transformers-4.57.6: files written by transformers 4.57.6 itself,
see SOURCE.txt there), transformers 5 writes rope_parameters. Every key gemma.py does not implement is refused."""
import json
import os
import shutil

import pytest
import torch

from hfconfig import CONFIG_KEYS, FULL, SLIDING
from gemma import Gemma, GemmaConfig, pad
from hf_reference import hf_positions, hf_rope, randomise

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "transformers-4.57.6")
TEXT = ("gemma", "gemma2", "gemma3_text")  # one fixture per generation; gemma3.json is the multimodal config


def fixture(name):
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return json.load(f)


def write(folder, config):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


def hf_config(folder):
    import transformers
    return transformers.AutoConfig.from_pretrained(folder)


def assert_read_as_transformers_reads(folder):
    """Our GemmaConfig of folder/config.json against what transformers 5.24 makes of the same file."""
    ours, theirs = GemmaConfig.from_json(os.path.join(folder, "config.json")), hf_config(folder)
    theirs = getattr(theirs, "text_config", theirs)
    assert ours.model_type == theirs.model_type
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "rms_norm_eps"):
        assert getattr(ours, field) == getattr(theirs, field), field
    if ours.model_type == "gemma":
        assert (ours.rope_theta, ours.rope_scaling_factor) == hf_rope(theirs)
        return ours
    for field in ("query_pre_attn_scalar", "sliding_window", "attn_logit_softcapping", "final_logit_softcapping"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert list(ours.layer_types) == theirs.layer_types
    assert (ours.rope_theta, ours.rope_scaling_factor) == hf_rope(theirs, FULL)
    local = (ours.rope_local_base_freq or ours.rope_theta, ours.rope_local_scaling_factor)
    assert local == hf_rope(theirs, SLIDING)
    return ours


def test_the_table_names_every_key_transformers_writes():
    import transformers
    keys = set()
    for name in ("GemmaConfig", "Gemma2Config", "Gemma3TextConfig", "Gemma3Config"):
        d = getattr(transformers, name)().to_dict()
        keys |= set(d) | set(d.get("text_config", {}))
    for name in TEXT:  # and what transformers 4.57 wrote
        keys |= set(fixture(name))
    keys |= set(fixture("gemma3")) | set(fixture("gemma3")["text_config"])
    assert keys - set(CONFIG_KEYS) == set()


@pytest.mark.parametrize("name", TEXT)
def test_both_generations_of_config_json_give_the_same_model(name, tmp_path):
    # transformers 5.24 reads the config.json that 4.57 wrote, builds the model and saves it in its own format: the
    # same weights under either config.json give the same GemmaConfig and logits, and transformers' logits
    import transformers
    old_json = fixture(name)
    assert "rope_parameters" not in old_json and "rope_theta" in old_json
    old = write(tmp_path / "old", old_json)
    hf = randomise(transformers.AutoModelForCausalLM.from_config(hf_config(old), attn_implementation="eager"))
    hf.save_pretrained(tmp_path / "new")
    new_json = json.loads((tmp_path / "new" / "config.json").read_text())
    assert "rope_parameters" in new_json and "rope_theta" not in new_json  # really the other format
    shutil.copy(tmp_path / "new" / "model.safetensors", tmp_path / "old")
    assert assert_read_as_transformers_reads(old) == assert_read_as_transformers_reads(str(tmp_path / "new"))
    a, b = Gemma.from_pretrained(old), Gemma.from_pretrained(str(tmp_path / "new"))
    g = torch.Generator().manual_seed(0)
    rows = [[2] + torch.randint(3, 512, (n,), generator=g).tolist() for n in (16, 7, 11)]  # longer than the window
    for side in ("right", "left"):
        ids, mask = pad(rows, 0, side)
        with torch.no_grad():
            ours, again = a.logits(a(ids, mask)), b.logits(b(ids, mask))
            ref = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
        real = mask.bool()
        assert torch.equal(ours, again)
        assert (ours - ref)[real].abs().max() <= 1e-4, side


def test_multimodal_gemma3_configs_of_both_generations(tmp_path):
    import transformers
    text = GemmaConfig.from_json(os.path.join(FIXTURES, "gemma3_text.json"))
    assert GemmaConfig.from_json(os.path.join(FIXTURES, "gemma3.json")) == text  # 4.57's text_config: no defaults
    mm = transformers.Gemma3Config(text_config=fixture("gemma3_text"), vision_config=fixture("gemma3")["vision_config"])
    mm.save_pretrained(tmp_path)
    assert "rope_parameters" in json.loads((tmp_path / "config.json").read_text())["text_config"]
    assert GemmaConfig.from_json(tmp_path / "config.json") == text


@pytest.mark.parametrize("name, drop", [
    ("gemma2", ["attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "sliding_window",
                "rope_theta", "layer_types"]),  # Gemma 2's defaults: caps 50 and 30, alternating layers
    ("gemma3_text", ["rope_theta", "rope_local_base_freq", "rope_scaling", "layer_types", "sliding_window"]),
    ("gemma", ["rope_theta", "rms_norm_eps", "max_position_embeddings"]),
])
def test_keys_left_out_mean_what_they_mean_to_transformers(name, drop, tmp_path):
    config = {k: v for k, v in fixture(name).items() if k not in drop}
    assert_read_as_transformers_reads(write(tmp_path, config))


def test_rope_parameters_of_transformers_5_as_written(tmp_path):
    # what 5.x writes for Gemma 3 (as in the issue), and a linear factor on the sliding layers, which 4.x could not
    config = {k: v for k, v in fixture("gemma3_text").items() if not k.startswith("rope")}
    config["rope_parameters"] = {FULL: {"rope_theta": 1000000.0, "rope_type": "default"},
                                 SLIDING: {"rope_theta": 10000.0, "rope_type": "default"}}
    cfg = assert_read_as_transformers_reads(write(tmp_path / "a", config))
    assert (cfg.rope_theta, cfg.rope_local_base_freq) == (1e6, 1e4)
    config["rope_parameters"][SLIDING] = {"rope_theta": 300.0, "rope_type": "linear", "factor": 3.0}
    cfg = assert_read_as_transformers_reads(write(tmp_path / "b", config))
    assert (cfg.rope_local_base_freq, cfg.rope_local_scaling_factor) == (300.0, 3.0)
    assert assert_read_as_transformers_reads(write(tmp_path / "c", cfg.to_hf())) == cfg  # both formats in one file


def test_our_config_with_every_rope_feature_gives_transformers_logits(tmp_path):
    import transformers
    cfg = GemmaConfig.from_json(os.path.join(FIXTURES, "gemma3_text.json"))
    cfg.rope_local_scaling_factor = 3.0  # written in rope_parameters only: transformers 4 had no key for it
    torch.manual_seed(0)
    ours = Gemma(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.5) if p.ndim == 1 else p.normal_(0, p.shape[1] ** -0.5)
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    ids = torch.randint(3, 512, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours.logits(ours(ids)) - theirs(input_ids=ids).logits).abs().max() <= 1e-4
        base = ours.logits(ours(ids))
        ours.config.rope_local_scaling_factor = 1.0
        assert (ours.logits(ours(ids)) - base).abs().max() > 1e-3  # the sliding layers' factor is used


def test_gemma_v1_legacy_gelu_is_the_tanh_gelu_in_transformers_5():
    # Google's Gemma v1 config.json says hidden_act "gelu". transformers 4.x ran that as the exact GELU; transformers 5
    # maps it to the tanh GELU Gemma was trained with, which gemma.py always uses: the version these tests expect.
    import transformers
    assert transformers.GemmaConfig(hidden_act="gelu").hidden_act == "gelu_pytorch_tanh"


def refused(tmp_path, config, message):
    with pytest.raises(ValueError, match=message) as e:
        GemmaConfig.from_json(write(tmp_path, config) + "/config.json")
    assert "\n" not in str(e.value) and str(e.value).count(". ") == 0, "one sentence"


def new_format(**rope):
    config = {k: v for k, v in fixture("gemma3_text").items() if not k.startswith("rope")}
    return {**config, "rope_parameters": {FULL: {"rope_type": "default", "rope_theta": 1e6, **rope},
                                          SLIDING: {"rope_type": "default", "rope_theta": 1e4}}}


@pytest.mark.parametrize("config, message", [
    (new_format(rope_type="yarn", factor=4.0), r"'rope_parameters.full_attention' has rope_type \"yarn\"; gemma.py "
                                               r"implements the RoPE types 'default' and 'linear' only"),
    (new_format(rope_type="linear", factor=4.0, beta_fast=32), r"'rope_parameters.full_attention.beta_fast' is not a "
                                                               r"key gemma.py implements for RoPE type 'linear'"),
    (new_format(factor=4.0), r"'rope_parameters.full_attention.factor' is not a key .* RoPE type 'default'"),
    (new_format(rope_type="linear"), r"gives no 'rope_parameters.full_attention.factor'"),
    (new_format(partial_rotary_factor=0.5), r"'rope_parameters.full_attention.partial_rotary_factor' is 0.5; "
                                            r"gemma.py implements only 1"),
    ({**fixture("gemma3_text"), "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
     r"'rope_scaling' has rope_type \"dynamic\""),
    ({**new_format(), "rope_theta": 5.0}, r"gives 'rope_theta' and 'rope_parameters', which disagree"),
    ({**new_format(), "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, r"'rope_scaling' and 'rope_parameter"),
    ({**new_format(), "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
     r"one entry per layer type"),
    ({**fixture("gemma"), "rope_parameters": {FULL: {"rope_type": "default"}}}, r"one RoPE for all layers"),
    ({**new_format(), "partial_rotary_factor": 0.5}, r"'partial_rotary_factor' is 0.5; gemma.py implements only 1"),
    ({**new_format(), "attention_bias": True}, r"'attention_bias' is true; gemma.py implements only false"),
    ({**new_format(), "attention_dropout": 0.1}, r"'attention_dropout' is 0.1"),
    ({**new_format(), "tie_word_embeddings": False}, r"'tie_word_embeddings' is false"),
    ({**new_format(), "quantization_config": {"quant_method": "bitsandbytes"}}, r"'quantization_config' is "),
    ({**new_format(), "hidden_activation": "gelu"}, r"'hidden_activation' is \"gelu\"; gemma.py implements only the "
                                                    r"tanh GELU"),
    ({**fixture("gemma"), "hidden_act": "silu"}, r"'hidden_act' is \"silu\""),
    ({**new_format(), "attn_scale_by_layer": 2.0}, r"'attn_scale_by_layer' is not a key of transformers' Gemma "
                                                   r"configs"),
    ({**fixture("gemma3"), "text_config": {**fixture("gemma3")["text_config"], "attention_bias": True}},
     r"'text_config.attention_bias' is true"),
    ({**new_format(), "rms_norm_eps": None}, r"gives no 'rms_norm_eps'"),
    ({**fixture("gemma"), "model_type": "llama", "mlp_bias": False}, r"describes a 'llama' model"),
    ({**new_format(), "sliding_window": None}, r"has sliding layers but 'sliding_window' is null"),
])
def test_refuses_what_it_does_not_implement_in_one_sentence(tmp_path, config, message):
    refused(tmp_path, config, message)
