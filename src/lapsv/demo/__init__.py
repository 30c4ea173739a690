"""`lapsv demo`: the method end to end on real speech, offline, on two frozen frontends."""

from lapsv.demo.run import DemoResult, run_demo, stage2_config
from lapsv.demo.sides import SIDES, Side

__all__ = ["SIDES", "DemoResult", "Side", "run_demo", "stage2_config"]
