"""burstq: push files of LLM requests through OpenAI-compatible APIs at the rate limit."""

__version__ = "0.1.0"
