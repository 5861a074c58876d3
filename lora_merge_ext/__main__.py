"""`python -m lora_merge_ext …` runs the command line."""
import sys

from .cli import main

sys.exit(main())
