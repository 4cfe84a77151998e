"""Predict with a Fall Armyworm run: python -m competitions.armyworm.infer run_name=X [test_file=F image_dir=D out=O]
[--submit]. Writes probabilities of damage."""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["armyworm", "infer", *sys.argv[1:]])
