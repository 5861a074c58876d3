"""`python -m lora_merge_ext …` runs the command line."""
from .cli import run

run()
