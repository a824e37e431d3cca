"""lipsyncd: a drop-folder daemon that renders lip-synced presenter videos and distributes them."""

__version__ = "0.1.0"
