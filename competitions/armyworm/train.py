"""Train Fall Armyworm: python -m competitions.armyworm.train [--config X] key=value ..."""
from common import cli
from competitions.armyworm.task import ArmywormTask

if __name__ == "__main__":
    cli.train(ArmywormTask())
