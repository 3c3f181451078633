"""Commonsense reasoning: a causal LM fine-tuned on LLM-Adapters data and scored on the tasks' test files."""
