"""transmamba.training"""
