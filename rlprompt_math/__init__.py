"""rlprompt-math: learn discrete prompts that make a frozen LLM solve math better."""

__version__ = "0.1.0"
