"""Webhooks: subscriptions, the transactional outbox of deliveries and the worker that sends them."""
