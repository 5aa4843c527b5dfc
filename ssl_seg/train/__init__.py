"""Training: the fine-tune / pretrain loop, its losses and checkpoints."""
