"""Same as ``convac-train``: ``python scripts/train.py [overrides]``."""
from convac.cli.train import main

if __name__ == "__main__":
    main()
