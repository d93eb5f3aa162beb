"""Dataset rows, their validation, and the builders that write train/val/test splits."""
