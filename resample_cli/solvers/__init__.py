"""Solvers: ReSample (``resample``), Latent-DPS and PSLD (``latent_dps``), the classical
baselines (``classical``), and their shared parts (``ddim``, ``consistency``, ``krylov``,
``trace``)."""
