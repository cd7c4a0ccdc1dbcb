"""Operator corrections: the review queue, merging two identities of one pallet, detaching an event."""
