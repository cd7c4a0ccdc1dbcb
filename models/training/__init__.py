"""Offline training of the fingerprint network: config, dataset readers, losses, sampler, augmentation, loop.

The service never imports this package.
"""
