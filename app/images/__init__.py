"""Block images as received: a content-addressed file store beside the database, one row per event block."""
