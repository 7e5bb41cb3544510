"""Random Gemma checkpoints written by transformers itself: the independent reference for our tests."""
import torch

# shapes that exercise every attention layout; 'mha' has heads x head_dim != hidden, like gemma-7b
CONFIGS = {
    "mqa": dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=1, head_dim=32),
    "mha": dict(hidden_size=96, intermediate_size=192, num_attention_heads=4, num_key_value_heads=4, head_dim=32,
                rms_norm_eps=1e-2),  # a large eps shows whether it sits inside the square root
    "gqa": dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                rms_norm_eps=1e-2, rope_theta=500.0),  # a non-default theta shows that config.json is read
}


# per generation: transformers' config class and causal LM class
GENERATIONS = {"gemma": ("GemmaConfig", "GemmaForCausalLM"), "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
               "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM")}


def random_hf_gemma(shape="mqa", vocab_size=512, num_hidden_layers=3, seed=0, cls=None, generation="gemma",
                    **overrides):
    """A transformers Gemma (GemmaForCausalLM by default; Gemma2ForCausalLM or Gemma3ForCausalLM by generation) in
    float32 with every weight randomised to O(1) activations (randomise). Eager attention: transformers 4's SDPA path
    silently dropped Gemma 2's soft-capping."""
    import transformers
    config_cls, model_cls = (getattr(transformers, name) for name in GENERATIONS[generation])
    cfg = config_cls(
        vocab_size=vocab_size, num_hidden_layers=num_hidden_layers, max_position_embeddings=1024,
        # the tanh GELU Gemma uses, named explicitly: transformers 4 ran the hub's "gelu" as the exact GELU
        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        attn_implementation="eager", dtype="float32", pad_token_id=0, eos_token_id=1, bos_token_id=2,
        **{**CONFIGS[shape], **overrides})
    return randomise((cls or model_cls)(cfg), seed)


def randomise(model, seed=0):
    """Every weight of a transformers Gemma drawn for O(1) activations, in float32, eval mode. At transformers' own
    init the norm weights are zero and activations tiny, which would hide a (1 + w) bug and the GELU variant."""
    torch.manual_seed(seed)
    model = model.float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm weights, applied as (1 + w)
                p.normal_(0.0, 0.5)
            else:  # Linear weights (out, in), and the embedding, scaled by sqrt(D) in the forward pass: O(1) after it
                p.normal_(0.0, p.shape[1] ** -0.5)
    act = model.model.layers[0].mlp.act_fn
    u = torch.linspace(-4, 4, 101)
    tanh_gelu = 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u ** 3)))
    assert torch.allclose(act(u), tanh_gelu, atol=1e-6), "the reference must use the tanh GELU that Gemma uses"
    return model


def hf_rope(config, layer_type="full_attention"):
    """(base, linear factor) of a layer type's RoPE as transformers 5 reads a config: rope_parameters, one dict, or in
    Gemma 3 one per layer type (transformers 4 had rope_theta, rope_local_base_freq and rope_scaling instead)."""
    params = config.rope_parameters.get(layer_type, config.rope_parameters)
    return params["rope_theta"], params["factor"] if params["rope_type"] == "linear" else 1.0


def hf_positions(mask):
    """Positions counting real tokens only, as our Gemma derives them from the mask; passed to the reference."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
