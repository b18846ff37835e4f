"""The command-line tools, one module per tool, each with `main(argv=None)`.

``bin/<tool>`` (from a checkout), the ``qffs-<tool>`` console scripts (after ``pip install``)
and ``python -m qffs_tf.tools.<tool>`` all run the same `main`.
"""
