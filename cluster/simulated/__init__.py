"""The simulated cluster backend: SQLite state, boot latency, fault injection, in-process sshd."""

from cluster.simulated.backend import SimulatedCluster
from cluster.simulated.faults import BootFailure, FaultPlan, ImagePullError, NodeDeath
from cluster.simulated.scenario import Scenario, ScenarioRule

__all__ = ["BootFailure", "FaultPlan", "ImagePullError", "NodeDeath", "Scenario", "ScenarioRule", "SimulatedCluster"]
