"""Blend mvtec runs from their OOF: python -m competitions.mvtec.ensemble runs="a b" run_name=blend [rank=true]"""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["mvtec", "ensemble", *sys.argv[1:]])
