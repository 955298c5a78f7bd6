"""pos-engine: the subsidy engine behind the city trade-union card."""

__version__ = "0.1.0"
