"""Seeded sensor signal generators shared by the agent, the model zoo and the simulator.

A leaf of the layering (numpy only): the agent's simulated source, the models' training data and
the simulator's virtual devices all draw from the same generators, so a model trained here sees
the signals the simulated fleet will produce, including per-device variation and drift.
"""

from edgefleet.signals.activity import ACTIVITIES, ActivitySignal
from edgefleet.signals.base import Drift, Signal, make_signal, register
from edgefleet.signals.vibration import VibrationSignal

register("vibration", VibrationSignal)
register("activity", ActivitySignal)

__all__ = [
    "ACTIVITIES",
    "ActivitySignal",
    "Drift",
    "Signal",
    "VibrationSignal",
    "make_signal",
    "register",
]
