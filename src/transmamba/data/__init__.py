"""transmamba.data"""
