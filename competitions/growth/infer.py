"""Predict with a growth run: python -m competitions.growth.infer run_name=X [test_file=FOLDER|CSV image_dir=D out=O]
[--submit]. Writes leaf weights in grams (img_name,leaf_weight)."""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["growth", "infer", *sys.argv[1:]])
