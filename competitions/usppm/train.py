"""Train USPPPM: python -m competitions.usppm.train [--config X] key=value ..."""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["usppm", "train", *sys.argv[1:]])
