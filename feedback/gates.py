"""Each model kind's promotion gate, in one place: what `models promote` (CLI and API) runs again before promoting."""

from __future__ import annotations

from citeloop.config import Settings
from citeloop.registry import GateDecision, VersionInfo


def regate(version: VersionInfo, settings: Settings | None = None, show_progress: bool = False) -> GateDecision:
    """The version's gate against what serves its collection now, on the version's own held-out data."""
    from feedback.generator_loop import run_generator_gate
    from feedback.reranker_loop import run_gate
    from feedback.reward import run_reward_gate

    gates = {"reranker": run_gate, "generator": run_generator_gate, "reward": run_reward_gate}
    return gates[version.kind](version, settings, show_progress)
