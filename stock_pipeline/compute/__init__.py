"""Pure computation: DataFrame in, DataFrame (or arrays) out. No I/O, no project imports.

Assets read from the warehouse, call these, and write the result; tests call them directly.
"""
