"""Train Fall Armyworm: python -m competitions.armyworm.train [--config X] key=value ..."""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["armyworm", "train", *sys.argv[1:]])
