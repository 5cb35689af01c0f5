"""``python -m clipood_recipes <command> ...`` = ``clipood <command> ...``; under Accelerate, from any folder:
``accelerate launch -m clipood_recipes train ...`` (``--multi_gpu --num_processes 2 ... cpu=true`` too)."""
from .cli import main

main()
