"""`python -m okkhor` (and `torchrun -m okkhor`) runs the CLI."""
from okkhor.cli import main

if __name__ == "__main__":
    main()
