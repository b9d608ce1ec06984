"""splitrl: learn where each attention head and FFN block of an LLM should run, edge or cloud."""

__version__ = "0.1.0"
