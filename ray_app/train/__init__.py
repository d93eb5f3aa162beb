"""Fine-tuning on Ray Train: LoRA adapters per track (see train.py)."""
