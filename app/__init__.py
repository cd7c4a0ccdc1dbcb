"""palletreid service: receipt/dispatch matching of pallet blocks on PostgreSQL/pgvector."""
