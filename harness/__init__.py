"""harness: iterative implicit cross-lingual rewarding (ICR) for multilingual preference alignment.

Importing this package is cheap: no torch, transformers, vllm or trl is loaded here.
"""

__version__ = "0.1.0"
