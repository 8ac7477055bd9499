"""Tiny configurations shared by the conformance cases of every kind of model."""

TEXT = dict(vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
DECODER = dict(TEXT, num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
VIT = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=16,
           patch_size=4)  # fmt: skip
SWIN = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 1, 1], num_heads=[2, 2, 2], window_size=4)
CONVNEXT = dict(image_size=32, patch_size=4, num_stages=3, hidden_sizes=[8, 16, 16], depths=[2, 1, 1])
