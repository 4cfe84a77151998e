"""Train growth: python -m competitions.growth.train [--config X] model_kind=cnn|gbm|fusion key=value ..."""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["growth", "train", *sys.argv[1:]])
