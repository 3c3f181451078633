"""GLUE: a sequence classifier (or regressor, STS-B) fine-tuned on a task and scored on its dev set."""
