"""Closed-loop evaluation of steering methods on the simulated benchmark, by concern.

* :mod:`~frs_sim.evaluate.rollout`: settings (method x parameters x integrator), episode seeds
  and jobs, one closed-loop episode (:func:`~frs_sim.evaluate.rollout.run_episode`);
* :mod:`~frs_sim.evaluate.workers`: running jobs here or in a spawn pool, instruction embeddings
  from a child process;
* :mod:`~frs_sim.evaluate.statistics`: Wilson intervals, per-setting summaries, the table;
* :mod:`~frs_sim.evaluate.plots`: success bars, end-effector paths of one episode;
* :mod:`~frs_sim.evaluate.results`: the driver (:func:`~frs_sim.evaluate.results.evaluate`)
  that runs a comparison and writes its results folder;
* :mod:`~frs_sim.evaluate.cli`: ``python -m frs_sim.evaluate`` (flags: ``--help``).

Importing this package imports nothing heavy; import the submodule you need.
"""
