"""transmamba.ops"""
