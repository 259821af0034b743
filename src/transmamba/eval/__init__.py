"""transmamba.eval"""
