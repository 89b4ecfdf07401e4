"""Models that fail the way a user's own code does (imported by tests/test_cli.py's bad input)."""


class NeedsAnArgument:
    def __init__(self, data, required):
        self.required = required

    def __call__(self, **batch):
        pass
