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
    float32 with every weight randomised to O(1) activations. At transformers' own init the norm weights are zero
    and activations tiny, which would hide a (1 + w) bug and the GELU variant. Eager attention: transformers' SDPA
    path silently drops Gemma 2's soft-capping."""
    import transformers
    config_cls, model_cls = (getattr(transformers, name) for name in GENERATIONS[generation])
    cfg = config_cls(
        vocab_size=vocab_size, num_hidden_layers=num_hidden_layers, max_position_embeddings=1024,
        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",  # the hub's "gelu" is exact in some versions
        attn_implementation="eager", torch_dtype="float32", pad_token_id=0, eos_token_id=1, bos_token_id=2,
        **{**CONFIGS[shape], **overrides})
    torch.manual_seed(seed)
    model = (cls or model_cls)(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm weights, applied as (1 + w)
                p.normal_(0.0, 0.5)
            elif "embed_tokens" in name:  # scaled by sqrt(D) in the forward pass: O(1) after scaling
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:  # Linear weights (out, in)
                p.normal_(0.0, p.shape[1] ** -0.5)
    act = model.model.layers[0].mlp.act_fn
    u = torch.linspace(-4, 4, 101)
    tanh_gelu = 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u ** 3)))
    assert torch.allclose(act(u), tanh_gelu, atol=1e-6), "the reference must use the tanh GELU that Gemma uses"
    return model


def hf_positions(mask):
    """Positions counting real tokens only, as our Gemma derives them from the mask; passed to the reference."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
