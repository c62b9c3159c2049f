"""Runs of the Agent Server API: their store, their execution and watching them."""
