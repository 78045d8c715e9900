"""``python -m wsss ...`` (so that ``torchrun --nproc-per-node N -m wsss train ...`` works)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="wsss")
