"""Pallet-block re-identification model: synthetic captures, PCB network, training and evaluation.

Pure torch: nothing here imports the service in ``app``.
"""
