"""transmamba.layers"""
