"""Gymnasium environments for prompt refinement."""
