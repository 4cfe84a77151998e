"""Blend code-similarity runs (cross + bi): python -m competitions.codesim.ensemble runs="a b" run_name=blend"""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["codesim", "ensemble", *sys.argv[1:]])
