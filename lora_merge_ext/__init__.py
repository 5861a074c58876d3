"""LoRA merge & join: exact joins, factored SVD merges, and Σ-toggling of joined LoRAs."""
__version__ = "0.1.0"
