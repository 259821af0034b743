"""transmamba.inference"""
