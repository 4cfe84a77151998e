"""Blend armyworm runs from their OOF: python -m competitions.armyworm.ensemble runs="a b" run_name=blend [rank=true]"""
from common import ensemble
from competitions.armyworm.task import ArmywormTask

if __name__ == "__main__":
    ensemble.main(ArmywormTask())
