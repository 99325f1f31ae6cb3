"""feedd: stream live crypto market data from exchange WebSockets to local consumers."""

from feedd.model import MarketData

__all__ = ["MarketData"]
__version__ = "0.1.0"
