"""Command-line tools: one module per tool, each with a `main(argv=None)` entry point.

`bin/<tool>` are thin shims that call these, and the console scripts (`qffs-train`, ...) point
at them, so both run the same code.
"""
