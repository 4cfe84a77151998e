"""Blend USPPPM runs: python -m competitions.usppm.ensemble runs="a b" run_name=blend [method=hill rank=true]"""
from common import ensemble
from competitions.usppm.task import UsppmTask

if __name__ == "__main__":
    ensemble.main(UsppmTask())
