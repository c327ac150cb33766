"""Pure measurement: latency on a hardware profile, size as deployed, task metric on dev."""
from .latency import HardwareProfile, LatencySettings, LatencyStats, measure_latency, synthetic_inputs
from .size import SizeReport, model_size

__all__ = [
    "HardwareProfile", "LatencySettings", "LatencyStats", "measure_latency", "synthetic_inputs",
    "SizeReport", "model_size",
]
