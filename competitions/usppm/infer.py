"""Predict with a USPPPM run: python -m competitions.usppm.infer run_name=X [test_file=F out=O] [--submit]"""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["usppm", "infer", *sys.argv[1:]])
