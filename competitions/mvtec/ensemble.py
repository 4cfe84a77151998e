"""Blend mvtec runs from their OOF: python -m competitions.mvtec.ensemble runs="a b" run_name=blend [rank=true]"""
from common import ensemble
from competitions.mvtec.task import MvtecTask

if __name__ == "__main__":
    ensemble.main(MvtecTask())
