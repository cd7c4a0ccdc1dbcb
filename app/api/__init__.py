"""HTTP wiring shared by the routers."""
