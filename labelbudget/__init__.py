"""labelbudget: sample-efficiency experiments for SSL speech models (library shared by every stage)."""

__version__ = "0.1.0"
