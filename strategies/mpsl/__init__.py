"""MPSL, the method of the paper, as a package that reads like it.

* :mod:`~strategies.mpsl.strategy`: setup, the epoch loop, and :meth:`MPSL.step`;
* :mod:`~strategies.mpsl.plan`: which batch each client draws next (:class:`StepPlan`);
* :mod:`~strategies.mpsl.legs`: the server's half of every leg and the drop policy;
* :mod:`~strategies.mpsl.roster`: clients, nodes, rejoin, head sync;
* :mod:`~strategies.mpsl.resume`: what a checkpoint holds and how a run resumes.
"""

from strategies.mpsl.strategy import MPSL

__all__ = ["MPSL"]
