"""Train USPPPM: python -m competitions.usppm.train [--config X] key=value ..."""
from common import cli
from competitions.usppm.task import UsppmTask

if __name__ == "__main__":
    cli.train(UsppmTask())
