"""Benchmarks against the peers measured in the same run: step time and memory (``step_time``), their
scaling with rank, components and adapted modules (``scaling``), and where a step's time goes
(``profile_step``).  Each is ``python -m monteclora_pyro.benchmarks.<name>`` (or ``benchmarks/<name>.py``)."""
