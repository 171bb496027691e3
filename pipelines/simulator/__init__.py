"""Labelled traffic simulator: normal users and bot families against any EVM endpoint.

`vigil simulate` (see `pipelines.simulator.cli`) and the embedded stack's default
traffic use it. The plan (`plan.Plan`) is pure given the seed and settings; the
runner (`runner.Simulator`) sets the chain up and sends; labels go to files and to
ClickHouse (`labels`).
"""

from pipelines.simulator.config import BOT_LABELS, LABEL_HF_BOT, LABEL_NORMAL, SimConfig
from pipelines.simulator.labels import LABELS_DDL, LABELS_MIGRATION, ClickHouseLabels
from pipelines.simulator.plan import Deployment, Plan, PlannedTx
from pipelines.simulator.runner import SimStats, SimulationError, Simulator

__all__ = [
    "BOT_LABELS",
    "LABELS_DDL",
    "LABELS_MIGRATION",
    "LABEL_HF_BOT",
    "LABEL_NORMAL",
    "ClickHouseLabels",
    "Deployment",
    "Plan",
    "PlannedTx",
    "SimConfig",
    "SimStats",
    "SimulationError",
    "Simulator",
]
