"""transmamba.commands"""
