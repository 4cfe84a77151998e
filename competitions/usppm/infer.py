"""Predict with a USPPPM run: python -m competitions.usppm.infer run_name=X [test_file=F out=O] [--submit]"""
from common import cli
from competitions.usppm.task import UsppmTask

if __name__ == "__main__":
    cli.infer(UsppmTask())
