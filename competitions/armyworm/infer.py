"""Predict with a Fall Armyworm run: python -m competitions.armyworm.infer run_name=X [test_file=F image_dir=D out=O]
[--submit]. Writes probabilities of damage."""
from common import cli
from competitions.armyworm.task import ArmywormTask

if __name__ == "__main__":
    cli.infer(ArmywormTask())
