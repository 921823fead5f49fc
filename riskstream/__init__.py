"""riskstream: a real-time risk and fraud engine on streams."""

__version__ = "0.1.0"
