"""Train DACON MVTec anomaly: python -m competitions.mvtec.train [--config X] key=value ..."""
from common import cli
from competitions.mvtec.task import MvtecTask

if __name__ == "__main__":
    cli.train(MvtecTask())
