"""Events: the receipt/dispatch history and the WMS feed."""
