"""`modelwatch contracts ...`: the AsyncAPI document and the compatibility checker."""
