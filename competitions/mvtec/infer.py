"""Predict with a DACON MVTec run: python -m competitions.mvtec.infer run_name=X [test_file=F image_dir=D out=O
image_size=N tta=true] [--submit]"""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["mvtec", "infer", *sys.argv[1:]])
