"""Blend growth runs (cnn, gbm, fusion) from their OOF: python -m competitions.growth.ensemble runs="a b c" run_name=blend"""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["growth", "ensemble", *sys.argv[1:]])
