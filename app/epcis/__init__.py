"""GS1 EPCIS 2.0: the receipt/dispatch history as standard supply-chain events, and GS1 keys."""
