"""Train code similarity: python -m competitions.codesim.train [--config X] key=value ... (encoder=cross|bi)"""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["codesim", "train", *sys.argv[1:]])
