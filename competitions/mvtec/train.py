"""Train DACON MVTec anomaly: python -m competitions.mvtec.train [--config X] key=value ..."""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["mvtec", "train", *sys.argv[1:]])
