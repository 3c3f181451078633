"""Task families, one sub-package each (``glue``, ``commonsense``): a light ``settings`` module (the
family's run settings and task table, no torch) and a ``family`` module with its
:class:`~monteclora_pyro.runner.pipeline.TaskFamily`."""
