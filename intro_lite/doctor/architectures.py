"""config.json numbers of the paper's models, for the doctor's memory estimate without a download.

Written from the models' public config.json files (Hugging Face hub, as published); nothing here was
downloaded or loaded on this machine. Only the keys `doctor.memory.estimate_memory` reads."""

from __future__ import annotations

ARCHITECTURES: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                              tie_word_embeddings=True, max_position_embeddings=32768),
    "Qwen/Qwen2.5-1.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
                              tie_word_embeddings=True, max_position_embeddings=131072),
    "Qwen/Qwen2.5-3B": dict(model_type="qwen2", vocab_size=151936, hidden_size=2048, num_hidden_layers=36,
                            num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008,
                            tie_word_embeddings=True, max_position_embeddings=32768),
    "Qwen/Qwen2.5-7B": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                            tie_word_embeddings=False, max_position_embeddings=131072),
    "Qwen/Qwen3-4B-Base": dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, num_hidden_layers=36,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=9728,
                               tie_word_embeddings=True, attention_bias=False, max_position_embeddings=32768),
    "Qwen/Qwen3-8B-Base": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, num_hidden_layers=36,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=12288,
                               tie_word_embeddings=False, attention_bias=False, max_position_embeddings=32768),
    "meta-llama/Llama-3.2-3B-Instruct": dict(model_type="llama", vocab_size=128256, hidden_size=3072,
                                             num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                                             head_dim=128, intermediate_size=8192, tie_word_embeddings=True,
                                             attention_bias=False, max_position_embeddings=131072),
    "meta-llama/Llama-3.1-8B-Instruct": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                             head_dim=128, intermediate_size=14336, tie_word_embeddings=False,
                                             attention_bias=False, max_position_embeddings=131072),
}
