"""Backbone and heads built from any registered SequenceLayer."""
