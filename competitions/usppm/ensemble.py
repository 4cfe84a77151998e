"""Blend USPPPM runs: python -m competitions.usppm.ensemble runs="a b" run_name=blend [method=hill rank=true]"""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["usppm", "ensemble", *sys.argv[1:]])
