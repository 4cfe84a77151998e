"""Predict with a DACON MVTec run: python -m competitions.mvtec.infer run_name=X [test_file=F image_dir=D out=O
image_size=N tta=true] [--submit]"""
from common import cli
from competitions.mvtec.task import MvtecTask

if __name__ == "__main__":
    cli.infer(MvtecTask())
