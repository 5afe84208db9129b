"""Durable micro-batch buffers: Arrow chunks kept in changelog-backed Faust tables."""
