"""What the Python peers share: the Llama-3.2-1B and Qwen3-0.6B shapes, PEFT's LoRA setup, and CUDA-event
timing."""
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B, T = 8, 1024  # the default shape; the scripts take others on the command line


def llama_1b_config():
    return LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                       rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def qwen3_06b_config():
    """Qwen/Qwen3-0.6B's shape (our --preset qwen3-0.6b): 16 heads of 128 over a hidden size of 1024, q/k norms."""
    return Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)


# The shapes a peer can build, by our preset's name: (config, model class).
SHAPES = {"llama-3.2-1b": (llama_1b_config, LlamaForCausalLM), "qwen3-0.6b": (qwen3_06b_config, Qwen3ForCausalLM)}


def with_lora(model):
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))


def timed(step, steps, tokens_per_step=None):
    """Runs 3 warm-up steps, then `steps` timed ones; returns (tokens/s, peak GiB reserved)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    return steps * (tokens_per_step or B * T) / seconds, torch.cuda.max_memory_reserved() / 2**30
