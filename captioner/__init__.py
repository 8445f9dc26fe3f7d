"""captioner: detailed Korean captions for video folders, with vLLM and LLaVA-NeXT-Video."""

__version__ = "0.1.0"
