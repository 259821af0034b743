"""transmamba.models"""
