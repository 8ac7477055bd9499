"""Self-contained modeling files, copied next to stage checkpoints for `trust_remote_code` loading (the TRGL stage, the
CIFAR ResNet, the auxiliary heads), and the loader of the pretrained CIFAR ResNet weights.

Every modeling file here imports only torch, transformers and its siblings (relative imports).
"""
