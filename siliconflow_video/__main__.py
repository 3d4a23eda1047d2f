"""``python -m siliconflow_video``: the ``siliconflow-video`` command line."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
