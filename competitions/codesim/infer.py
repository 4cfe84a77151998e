"""Predict with a code-similarity run: python -m competitions.codesim.infer run_name=X [test_file=F out=O] [--submit]
test_file: any CSV with pair_id,code1,code2 (source inline); writes pair_id,similar (0/1 at the run's threshold)."""
import sys

from competitions.__main__ import main

if __name__ == "__main__":
    main(["codesim", "infer", *sys.argv[1:]])
