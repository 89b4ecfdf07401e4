"""pyrotrain's Optuna sweeper for Hydra (``hydra/sweeper=optuna``, chosen by
``hparams_search=optuna``).

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace, so the class lives here;
everything it does with Optuna is in :mod:`pyrotrain.search`.
"""

from .sweeper import OptunaSweeper

__all__ = ["OptunaSweeper"]
