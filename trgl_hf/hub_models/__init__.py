"""Self-contained modeling files, copied next to stage checkpoints for `trust_remote_code` loading.

Every module here imports only torch, transformers and its siblings (relative imports).
"""
