"""Built-in Pyro models, one module per model family, installed as ``pyrotrain.models``.

A model is a callable that takes the minibatch by keyword: each data tensor by its name, plus
``index`` (the rows' positions in the training set) and ``size`` (the number of training rows, for
plate scaling). It may define ``guide`` (used with ``guide=model``) and
``evaluate(guide, data, num_samples) -> dict`` to score ``data.eval`` after training.
"""
