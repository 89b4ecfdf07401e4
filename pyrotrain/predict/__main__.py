"""``python -m pyrotrain.predict``: the same as ``pyrotrain-predict``."""

from .cli import main

main()
