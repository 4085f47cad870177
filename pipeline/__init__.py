"""The conversation: turn-taking, barge-in, ASR / LLM / TTS engines, per-stage timing."""
