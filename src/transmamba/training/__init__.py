"""transmamba.training: the trainer and its parts.

`config.TrainConfig` (every knob, YAML + CLI), `trainer.Trainer` (the loop), `checkpoint` (atomic saves,
exact resume), `optim` (AdamW + warmup/cosine), `metrics` (CSV, TensorBoard, plots, bits per byte),
`distributed` (DDP under torchrun).
"""
